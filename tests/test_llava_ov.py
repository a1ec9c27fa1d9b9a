"""LLaVA-OV subsampler units: the category table, rescaling, the seeded row-group sampler, ranged Parquet reads,
row checks and plan-time failures. No Ray, no server (see test_llava_ov_build / test_llava_ov_hub for those)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sgt_data.config import ConfigError
from sgt_data.sources import llava_ov_io as ovio
from sgt_data.sources import llava_ov_plan as ovplan
from sgt_data.sources import llava_ov_spec as ovspec
from sgt_data.sources.llava_ov_rows import CheckVqa, check_row

REPO = Path(__file__).resolve().parents[1]
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
CONV_TYPE = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))


def _png(size=(6, 4)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _conv(text: str) -> list[dict]:
    return [{"from": "human", "value": text}, {"from": "gpt", "value": "answer"}]


# ---------------------------------------------------------------- the table


def test_sgt_table_totals_are_stated_and_consistent():
    spec = ovspec.load_spec(REPO / "pipelines" / "llava_ov.yaml")
    assert spec.total == 74000
    totals = {name: cat.total for name, cat in spec.categories.items()}
    assert totals == {
        "General": 10100,
        "Doc_Chart_Screen": 20600,
        "Math_Reasoning": 20100,
        "General_OCR": 8900,
        "Language": 14300,
    }
    assert spec.categories["Doc_Chart_Screen"].configs["dvqa(cauldron,llava_format)"] == 4000
    assert sum(spec.replacements["cambrian(filtered)"].values()) == 5100


def test_inconsistent_table_lists_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "total: 500000\ncategories:\n  A:\n    total: 10\n    configs: {x: 4, y: 5}\n"
        "  B:\n    total: 3\n    configs: {x: 3}\nreplacements:\n  y: {z: 1}\n"
    )
    with pytest.raises(ConfigError) as err:
        ovspec.load_spec(bad)
    text = str(err.value)
    assert "categories.A.total is 10 but its configs sum to 9" in text
    assert "total is 500000 but the category totals sum to 13" in text
    assert "'x' is listed in both A and B" in text
    assert "replacements.y: replacements sum to 1, not its count 5" in text


def test_rescale_keeps_ratios_and_sums_exactly():
    spec = ovspec.load_spec(REPO / "pipelines" / "llava_ov.yaml")
    table = ovspec.quotas(spec, total=500000)
    assert sum(n for _, n in table.values()) == 500000
    base = ovspec.quotas(spec)
    for config, (_, n) in table.items():
        assert abs(n - base[config][1] * 500000 / 74000) < 1  # largest remainder: within one row of exact
    assert ovspec.rescale({"a": 1, "b": 1, "c": 1}, 2) == {"a": 1, "b": 1, "c": 0}  # ties break by order
    # c and d have equal true remainders: the tie goes to the earlier config (float remainders gave it to d)
    counts = {"a": 4437, "b": 3563, "c": 3733, "d": 7803}
    assert ovspec.rescale(counts, 503088) == {"a": 114261, "b": 91754, "c": 96132, "d": 200941}


def test_fix_missing_and_exclude_are_explicit():
    spec = ovspec.load_spec(REPO / "pipelines" / "llava_ov.yaml")
    plain = ovspec.quotas(spec)
    assert "cambrian(filtered)" in plain and "sharegpt4o" not in plain
    fixed = ovspec.quotas(spec, fix_missing=True, exclude=["docvqa(cauldron,llava_format)"])
    assert "cambrian(filtered)" not in fixed and fixed["sharegpt4v(sam)"] == ("General", 1500)
    assert "docvqa(cauldron,llava_format)" not in fixed
    assert sum(n for _, n in fixed.values()) == 74000 - 2600
    with pytest.raises(ValueError, match="not in the table"):
        ovspec.quotas(spec, exclude=["docvqa"])


# ---------------------------------------------------------------- the sampler


def test_sampler_is_seeded_per_config_and_exact():
    sizes = [100] * 50 + [37]
    a = ovplan.sample_groups(sizes, 300, ovplan.config_seed(42, "dvqa(x,y)"), 1.3)
    b = ovplan.sample_groups(sizes, 300, ovplan.config_seed(42, "dvqa(x,y)"), 1.3)
    c = ovplan.sample_groups(sizes, 300, ovplan.config_seed(43, "dvqa(x,y)"), 1.3)
    d = ovplan.sample_groups(sizes, 300, ovplan.config_seed(42, "other"), 1.3)
    assert a == b and a != c and a != d
    assert sum(len(rows) for _, rows in a) == 300
    for g, rows in a:
        assert rows == sorted(set(rows)) and all(0 <= r < sizes[g] for r in rows)


def test_budget_bounds_row_groups_and_exact_mode_does_not():
    sizes = [100] * 200  # 20,000 rows in 100-row groups, like a dvqa slice
    n = 400  # 2%
    budgeted = ovplan.sample_groups(sizes, n, np.random.default_rng(0), 1.3)
    exact = ovplan.sample_groups(sizes, n, np.random.default_rng(0), None)
    assert len(budgeted) <= 5  # floor(1.3 * 400 / 100) groups: fetched/kept ~ 1.25
    assert len(exact) > 150  # a simple random sample touches most groups (~1 - 0.98^100 = 87%)


def test_sampler_inclusion_is_uniform():
    """Every row has the same chance n/N: over many seeds, per-row frequencies match (budgeted and exact)."""
    sizes = [10, 10, 10, 10, 10, 10]
    n, trials = 12, 3000
    for budget in (1.3, None):
        hits = np.zeros(sum(sizes))
        for seed in range(trials):
            for g, rows in ovplan.sample_groups(sizes, n, np.random.default_rng(seed), budget):
                hits[np.array(rows) + 10 * g] += 1
        freq = hits / trials
        assert abs(freq.mean() - n / 60) < 1e-9
        assert np.all(np.abs(freq - n / 60) < 0.05), (budget, freq.min(), freq.max())


def test_pack_shards_keeps_row_groups_whole_and_configs_apart():
    files = [ovio.FileRef("c", "c/a.parquet", 1)]
    p1 = ovplan.ConfigPlan("c1", "A", 7, 10, files, 3)
    p1.pieces = [ovplan.Piece("c/a.parquet", 0, [0, 1, 2]), ovplan.Piece("c/a.parquet", 1, [0, 1, 2, 3])]
    p2 = ovplan.ConfigPlan("c2", "A", 2, 10, files, 3)
    p2.pieces = [ovplan.Piece("c/a.parquet", 2, [5, 6])]
    packed = ovplan.pack_shards([p1, p2], rows_per_shard=5)
    assert [(plan.config, [len(x.rows) for x in pieces]) for plan, pieces in packed] == [
        ("c1", [3]),
        ("c1", [4]),
        ("c2", [2]),
    ]


# ---------------------------------------------------------------- ranged reads


@pytest.fixture
def local_repo(tmp_path) -> Path:
    """Two configs with awkward names, several files and row groups; one text-only."""
    for config, files, image in (("chart(a,b)", 2, True), ("magpie(x)", 1, False)):
        (tmp_path / config).mkdir()
        for f in range(files):
            rows = [
                {
                    "id": f"{config}-{f}-{i}",
                    "image": {"bytes": _png((4 + i % 5, 4)), "path": None} if image else None,
                    "conversations": _conv(("<image>\n" if image else "") + f"q{i}"),
                    "data_source": config,
                }
                for i in range(25)
            ]
            schema = pa.schema(
                [
                    ("id", pa.string()),
                    ("image", IMAGE_TYPE),
                    ("conversations", CONV_TYPE),
                    ("data_source", pa.string()),
                ]
            )
            pq.write_table(
                pa.Table.from_pylist(rows, schema=schema),
                tmp_path / config / f"train-{f:05d}-of-{files:05d}.parquet",
                row_group_size=10,
            )
    return tmp_path


def test_footer_and_row_group_reads_fetch_only_what_they_need(local_repo):
    source = ovio.LocalSource(local_repo)
    refs = source.list_files()
    assert [r.config for r in refs] == ["chart(a,b)", "chart(a,b)", "magpie(x)"]
    ref = refs[1]
    footer = ovio.read_footer(source, ref)
    assert source.counter.requests == 2 and source.counter.bytes == len(footer)
    md = ovio.parse_footer(footer)
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [10, 10, 5]
    source.counter = ovio.Counter()
    table = ovio.read_row_group(source, ref, footer, 1, ["id", "image", "conversations"])
    expected = pq.ParquetFile(local_repo / ref.path).read_row_group(
        1, columns=["id", "image", "conversations"]
    )
    assert table.equals(expected)
    group = md.row_group(1)
    needed = sum(
        group.column(i).total_compressed_size
        for i in range(group.num_columns)
        if not group.column(i).path_in_schema.startswith("data_source")
    )
    assert needed <= source.counter.bytes <= needed + ovio.MERGE_GAP
    assert source.counter.requests <= 3  # one merged range per run of adjacent column chunks


def test_missing_config_fails_at_plan_time_with_the_list(local_repo):
    table = {"chart(a,b)": ("A", 5), "docvqa(c,d)": ("A", 2), "nope": ("B", 1)}
    with pytest.raises(ovplan.PlanError) as err:
        ovplan.make_plan(ovio.LocalSource(local_repo), table, 1, 1.3, ["id"])
    text = str(err.value)
    assert "2 config(s) not found" in text and "docvqa(c,d), nope" in text
    assert "available configs (2): chart(a,b), magpie(x)" in text and "--exclude" in text


def test_short_config_fails_unless_allowed(local_repo):
    table = {"magpie(x)": ("L", 40)}
    with pytest.raises(ovplan.PlanError, match="magpie\\(x\\) wants 40 of 25"):
        ovplan.make_plan(ovio.LocalSource(local_repo), table, 1, 1.3, ["id"])
    plans, _ = ovplan.make_plan(ovio.LocalSource(local_repo), table, 1, 1.3, ["id"], allow_short=True)
    assert plans[0].quota == 25 and plans[0].short


def test_plan_ignores_listing_order(local_repo):
    class Reversed(ovio.LocalSource):
        def list_files(self):
            return list(reversed(super().list_files()))

    table = {"chart(a,b)": ("A", 17), "magpie(x)": ("L", 6)}
    a, _ = ovplan.make_plan(ovio.LocalSource(local_repo), table, 9, 1.3, ["id"])
    b, _ = ovplan.make_plan(Reversed(local_repo), dict(reversed(table.items())), 9, 1.3, ["id"])
    pieces = {p.config: [(x.path, x.row_group, x.rows) for x in p.pieces] for p in a}
    assert pieces == {p.config: [(x.path, x.row_group, x.rows) for x in p.pieces] for p in b}


# ---------------------------------------------------------------- row checks


def test_check_row_accepts_images_and_text_only():
    img, turns = check_row({"bytes": _png(), "path": "x.png"}, _conv("<image>\nwhat?"))
    assert img == {"bytes": _png(), "path": "x.png"} and turns[0]["from"] == "human"
    assert check_row(None, _conv("hello")) == (None, _conv("hello"))


@pytest.mark.parametrize(
    ("image", "conv", "status", "needle"),
    [
        ({"bytes": b"\xff\xd8garbage", "path": None}, _conv("<image>\nq"), "bad_image", "do not decode"),
        ({"bytes": None, "path": "lost.jpg"}, _conv("<image>\nq"), "bad_image", "no bytes"),
        ({"bytes": _png(), "path": None}, [], "bad_conversation", "no conversations"),
        (
            {"bytes": _png(), "path": None},
            _conv("no placeholder"),
            "bad_conversation",
            "0 <image> placeholder(s) for 1",
        ),
        (None, _conv("<image>\n<image> two"), "bad_conversation", "2 <image> placeholder(s) for 0"),
        (None, [{"from": "human"}], "bad_conversation", "turn 0 has no string `value`"),
        (None, [{"from": "human", "value": "q"}], "bad_conversation", "no non-empty gpt answer"),
        (
            None,
            [{"from": "human", "value": "q"}, {"from": "gpt", "value": " "}],
            "bad_conversation",
            "no non-empty",
        ),
        (
            None,
            [{"from": "user", "value": "q"}, {"from": "assistant", "value": "a"}],
            "bad_conversation",
            "human / gpt",
        ),
        (None, [{"from": "system", "value": "s"}, *_conv("q")], "bad_conversation", "role 'system'"),
        (
            {"bytes": _png((3000, 10)), "path": None},
            _conv("<image>\nq"),
            "bad_image",
            "aspect ratio over 200",
        ),
    ],
)
def test_bad_rows_become_status_rows(image, conv, status, needle):
    batch = {"key": ["k"], "image": [image], "conversations": [conv]}
    out = CheckVqa()(batch)
    assert out["status"] == [status] and needle in out["error"][0]
    assert " at 0x" not in out["error"][0]  # no object addresses: same input, same shard bytes
    assert len(out["key"]) == 1  # counts in == counts out
