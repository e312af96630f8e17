"""Data statistics: counts, positive rates and overlaps against brute-force set computations."""

from __future__ import annotations

import io
import itertools
import math

import polars as pl
import pytest
from rich.console import Console

from mdmt.data.base import DataError, RawData
from mdmt.data.stats import data_stats, render_stats, stats_markdown
from mdmt.data.synthetic import SyntheticConfig, generate
from mdmt.schema import DatasetSpec, DomainSpec, FeatureSpec, TaskSpec


@pytest.fixture(scope="module")
def synth() -> RawData:
    return generate(SyntheticConfig(preset="kuaishou", rows=3_000, seed=5))


def _hand() -> RawData:
    frame = pl.DataFrame(
        {
            "uid": [1, 1, 2, 3, 3, 4, 5, 5, 6],
            "iid": ["a", "b", "a", "c", "c", "d", "a", "e", "e"],
            "scene": ["x", "y", "x", "x", "y", "z", "y", "z", "z"],
            "click": [1, 0, 0, 1, None, 1, 0, 1, 0],
            "buy": [0, 0, None, 1, 0, None, 0, 0, 1],
        }
    )
    spec = DatasetSpec(
        name="hand",
        features=[FeatureSpec(name="uid", source="user"), FeatureSpec(name="iid", source="item")],
        domain=DomainSpec(column="scene", names=["x", "y", "z"]),
        tasks=[TaskSpec(name="click", label="click"), TaskSpec(name="buy", label="buy")],
        group="uid",
    )
    return RawData(spec=spec, frame=frame, source="hand.csv")


def _brute(frame: pl.DataFrame, dom: str, user: str, item: str, labels: list[str], names: list[str]) -> dict:
    rows = frame.rows(named=True)
    users = {d: {r[user] for r in rows if r[dom] == d} for d in names}
    items = {d: {r[item] for r in rows if r[dom] == d} for d in names}
    out = {"users": {d: len(users[d]) for d in names}, "items": {d: len(items[d]) for d in names},
           "rows": {d: sum(r[dom] == d for r in rows) for d in names}, "rate": {}, "uo": {}, "io": {}}
    for d in names:
        for t in labels:
            obs = [r[t] for r in rows if r[dom] == d and r[t] is not None]
            out["rate"][(d, t)] = sum(obs) / len(obs) if obs else math.nan
    for x, y in itertools.permutations(names, 2):
        out["uo"][(x, y)] = len(users[x] & users[y]) / len(users[x])
        out["io"][(x, y)] = len(items[x] & items[y]) / len(items[x])
    return out


def _assert_matches(stats: dict, want: dict, names: list[str], tasks: list[str]) -> None:
    for d in names:
        assert stats["per_domain"][d]["users"] == want["users"][d]
        assert stats["per_domain"][d]["items"] == want["items"][d]
        assert stats["per_domain"][d]["rows"] == want["rows"][d]
        for t in tasks:
            got, exp = stats["positive_rate"][d][t], want["rate"][(d, t)]
            assert (math.isnan(got) and math.isnan(exp)) or got == pytest.approx(exp), (d, t)
    for x, y in itertools.permutations(names, 2):
        assert stats["user_overlap"][x][y] == pytest.approx(want["uo"][(x, y)]), (x, y)
        assert stats["item_overlap"][x][y] == pytest.approx(want["io"][(x, y)]), (x, y)


def test_hand_frame_matches_brute_force_sets():
    raw = _hand()
    stats = data_stats(raw)
    want = _brute(raw.frame, "scene", "uid", "iid", ["click", "buy"], ["x", "y", "z"])
    _assert_matches(stats, want, ["x", "y", "z"], ["click", "buy"])
    # spot values worked out by hand: x users {1,2,3}, y {1,3,5}, z {4,5,6}
    assert stats["user_overlap"]["x"]["y"] == pytest.approx(2 / 3)
    assert stats["user_overlap"]["z"]["y"] == pytest.approx(1 / 3)
    assert stats["user_overlap"]["x"]["z"] == 0.0
    assert stats["positive_rate"]["y"]["click"] == pytest.approx(0.0)  # the null is not observed
    assert stats["positive_rate"]["z"]["buy"] == pytest.approx(1 / 2)
    assert stats["observed"]["y"]["click"] == 2
    assert "targets" not in stats


def test_generated_frame_matches_brute_force_sets(synth):
    stats = data_stats(synth)
    names, tasks = synth.spec.domain_names, synth.spec.task_names
    want = _brute(synth.frame, "domain", "user_id", "item_id", tasks, names)
    _assert_matches(stats, want, names, tasks)
    assert stats["rows"] == synth.frame.height
    assert sum(v["share"] for v in stats["per_domain"].values()) == pytest.approx(1.0)
    assert stats["targets"]["positive_rate"]["B"]["click"] == pytest.approx(0.5838)
    assert stats["targets"]["user_overlap"]["A"]["B"] == pytest.approx(0.9211)


def test_domain_mapping_and_bad_domain_value():
    raw = _hand()
    frame = raw.frame.with_columns(pl.col("scene").replace({"x": "1", "y": "2", "z": "3"}).cast(pl.Int64))
    spec = raw.spec.model_copy(update={"domain": DomainSpec(column="scene", names=["lo", "hi"],
                                                            mapping={"lo": [1, 2], "hi": [3]})})
    stats = data_stats(RawData(spec=spec, frame=frame, source="mapped.csv"))
    assert stats["per_domain"]["lo"]["rows"] == 6 and stats["per_domain"]["hi"]["rows"] == 3
    assert stats["user_overlap"]["hi"]["lo"] == pytest.approx(1 / 3)  # {4,5,6} & {1,2,3,5}
    bad = raw.frame.with_columns(pl.when(pl.int_range(pl.len()) == 4).then(pl.lit("w"))
                                 .otherwise(pl.col("scene")).alias("scene"))
    with pytest.raises(DataError, match=r"bad\.csv.*'scene'.*row 4.*'w'"):
        data_stats(RawData(spec=raw.spec, frame=bad, source="bad.csv"))


def test_render_and_markdown_show_realised_and_target(synth):
    stats = data_stats(synth)
    buf = io.StringIO()
    render_stats(stats, Console(file=buf, width=200, color_system=None))
    text = buf.getvalue()
    md = stats_markdown(stats)
    for out in (text, md):
        assert "A→B" in out and "C→A" in out
        assert "58.38%" in out  # B click target
        assert "92.1%" in out  # A→B user overlap target
        assert "effview" in out
    uo = stats["user_overlap"]["A"]["C"]
    assert f"{100 * uo:.1f}%" in md
    assert md.count("|---|") == 3  # three tables
    plain = stats_markdown(data_stats(_hand()))
    assert "target" not in plain and "x→y" in plain


@pytest.mark.parametrize("keep", [[], ["uid"], ["iid"]])
def test_without_user_or_item_id_the_sections_are_skipped_with_a_note(keep):
    hand = _hand()
    features = [f for f in hand.spec.features if f.name in keep] + [FeatureSpec(name="price", kind="dense")]
    spec = hand.spec.model_copy(update={"features": features, "group": "uid" if "uid" in keep else None})
    frame = hand.frame.with_columns(price=pl.lit(1.0)).select([f.name for f in features] + ["scene", "click", "buy"])
    stats = data_stats(RawData(spec, frame, "hand.csv"))
    assert stats["per_domain"]["x"]["rows"] == 3 and stats["positive_rate"]["x"]["click"] == pytest.approx(2 / 3)
    assert (stats["user_overlap"] is None) == ("uid" not in keep)
    assert (stats["item_overlap"] is None) == ("iid" not in keep)
    assert len(stats["notes"]) == 2 - len(keep)
    buf = io.StringIO()
    render_stats(stats, Console(file=buf, width=200))
    md = stats_markdown(stats)
    for text in (buf.getvalue(), md):
        assert ("Users" in text) == ("uid" in keep) and ("Items" in text) == ("iid" in keep)
        assert text.count("Note: the schema has no") == 2 - len(keep)
        assert ("Cross-domain overlap" in text) == bool(keep)


def test_data_stats_command_without_ids(tmp_path):
    from mdmt.cli import main

    (tmp_path / "schema.yaml").write_text(
        "name: noid\nfeatures: [{name: price, kind: dense}]\ndomain: {column: tab, names: [a, b]}\n"
        "tasks: [{name: click, label: click}]\n"
    )
    (tmp_path / "rows.csv").write_text("price,tab,click\n1.0,a,1\n2.0,b,0\n3.0,a,0\n")
    (tmp_path / "exp.yaml").write_text(
        f"data: {{source: table, params: {{path: {tmp_path / 'rows.csv'}, schema: {tmp_path / 'schema.yaml'}}}}}\n"
        "model: {name: mlp}\n"
    )
    assert main(["data", "stats", str(tmp_path / "exp.yaml")]) == 0
