"""A small bring-your-own-data project ("shop") shared by the CLI tests and the bad-input catalogue.

Two domains (``home``, ``search``), two tasks (``click`` everywhere, ``order`` observed in
``search`` only), a user/item id, a dense price, a ``|``-delimited item history and a timestamp.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

__all__ = ["SCHEMA", "shop_table", "write_project"]

SCHEMA = """\
name: shop
features:
  - {name: user_id, source: user}
  - {name: item_id, source: item}
  - {name: price, kind: dense, source: item}
  - {name: hist, kind: sequence, vocab: item_id, max_len: 4, behaviour: click}
domain: {column: tab, names: [home, search]}
tasks:
  - {name: click, label: click}
  - {name: order, label: order, domains: [search]}
group: user_id
timestamp: ts
split: {method: temporal}
"""


def shop_table(n: int = 3000, seed: int = 0) -> pl.DataFrame:
    """``n`` raw rows of the shop schema; the click probability depends on user, item and tab."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 60, n)
    item = rng.integers(0, 40, n)
    tab = np.where(rng.random(n) < 0.5, "home", "search")
    price = rng.normal(10, 3, n)
    score = np.sin(user) + np.cos(item) + 0.5 * (tab == "search")
    click = (rng.random(n) < 1 / (1 + np.exp(-2 * score))).astype(int)
    order = pl.Series((rng.random(n) < 0.3 * click).astype(int)).set(pl.Series(tab == "home"), None)
    hist = ["|".join(str(x) for x in rng.integers(0, 40, rng.integers(0, 5))) for _ in range(n)]
    return pl.DataFrame({"user_id": user, "item_id": item, "tab": tab, "price": price, "hist": hist,
                         "click": click, "order": order, "ts": np.arange(n)})


def write_project(root: Path, model: str = "sharedbottom", epochs: int = 2) -> Path:
    """Write ``rows.csv``, ``schema.yaml`` and ``exp.yaml`` (runs go to ``root/runs``) into ``root``."""
    shop_table().write_csv(root / "rows.csv")
    (root / "schema.yaml").write_text(SCHEMA)
    (root / "exp.yaml").write_text(
        f"name: shop\ndata: {{source: table, params: {{path: {root / 'rows.csv'}, schema: {root / 'schema.yaml'}}}}}\n"
        f"model: {{name: {model}}}\ntrain: {{epochs: {epochs}, batch_size: 256, lr: 0.01, progress: false}}\n"
        f"output_dir: {root / 'runs'}\n"
    )
    return root
