"""Bad inputs around the encoded data cache (``data.cache_dir``).

A damaged cache (a truncated shard, a broken ``feature_map.json`` or ``meta.json``) is not an
error: it is rebuilt with a message (``tests/test_cache_repair.py``).
"""

from __future__ import annotations

from . import Workspace, bad_input


def _cache_dir(ws: Workspace, where: str) -> list[str]:
    ws.project()
    ws.edit("exp.yaml", "data: {source: table,", f"data: {{cache_dir: {where}, source: table,")
    return ["data", "prepare", "exp.yaml"]


@bad_input("cache", "The cache directory is a file", expect="cache_dir")
def cache_dir_is_a_file(ws: Workspace) -> list[str]:
    ws.write("cache", "not a directory")
    return _cache_dir(ws, "cache")


@bad_input("cache", "The cache directory lies inside a file", expect="cache_dir")
def cache_dir_inside_a_file(ws: Workspace) -> list[str]:
    ws.write("notes.txt", "a file")
    return _cache_dir(ws, "notes.txt/cache")
