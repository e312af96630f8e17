"""Bad inputs in a data set's schema (the YAML ``DatasetSpec`` of the table source)."""

from __future__ import annotations

from . import Workspace, bad_input


def _schema(ws: Workspace, old: str, new: str) -> list[str]:
    ws.project()
    ws.edit("schema.yaml", old, new)
    return ["data", "prepare", "exp.yaml"]


@bad_input("schema", "An embedding table names a feature the schema does not declare", expect="unknown feature 'shop_id'")
def table_unknown_feature(ws: Workspace) -> list[str]:
    return _schema(ws, "domain:", "tables: [{name: ids, dim: 8, features: [item_id, shop_id]}]\ndomain:")


@bad_input("schema", "Split ratios that do not sum to 1", expect="sum to 1")
def split_ratios_sum(ws: Workspace) -> list[str]:
    return _schema(ws, "split: {method: temporal}", "split: {method: temporal, ratios: [0.8, 0.2, 0.2]}")


@bad_input("schema", "A negative split ratio", expect="non-negative")
def split_ratio_negative(ws: Workspace) -> list[str]:
    return _schema(ws, "split: {method: temporal}", "split: {method: temporal, ratios: [1.1, -0.2, 0.1]}")


@bad_input("schema", "Two features with one name", expect="duplicate feature names")
def duplicate_feature(ws: Workspace) -> list[str]:
    return _schema(ws, "  - {name: price, kind: dense, source: item}",
                   "  - {name: price, kind: dense, source: item}\n  - {name: price, kind: dense}")


@bad_input("schema", "The group (GAUC) names an unknown feature", expect="group")
def unknown_group(ws: Workspace) -> list[str]:
    return _schema(ws, "group: user_id", "group: customer_id")


@bad_input("schema", "A task observed in a domain the schema does not have", expect="basket")
def task_unknown_domain(ws: Workspace) -> list[str]:
    return _schema(ws, "domains: [search]", "domains: [search, basket]")


@bad_input("schema", "Two domains with one name", expect="domain names must be unique")
def duplicate_domain(ws: Workspace) -> list[str]:
    return _schema(ws, "names: [home, search]", "names: [home, home]")


@bad_input("schema", "A task's related feature is not a feature", expect="price_rate")
def unknown_related_feature(ws: Workspace) -> list[str]:
    return _schema(ws, "  - {name: click, label: click}", "  - {name: click, label: click, related_features: [price_rate]}")


@bad_input("schema", "A prior names an unknown feature", expect="user_ctr")
def unknown_prior(ws: Workspace) -> list[str]:
    return _schema(ws, "group: user_id", "group: user_id\npriors: [user_ctr]")


@bad_input("schema", "A misspelt schema key", expect="timestmap")
def misspelt_schema_key(ws: Workspace) -> list[str]:
    return _schema(ws, "timestamp: ts", "timestmap: ts")


@bad_input("schema", "A schema that is not valid YAML", expect="schema.yaml")
def schema_not_yaml(ws: Workspace) -> list[str]:
    return _schema(ws, "tasks:", "tasks: [\n")


@bad_input("schema", "A temporal split without a timestamp column", expect="timestamp")
def temporal_without_timestamp(ws: Workspace) -> list[str]:
    return _schema(ws, "timestamp: ts\n", "")
