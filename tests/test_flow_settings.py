"""The Flow's settings are listed once, in `executors.flow_env.FLOW_SETTINGS`: the README's
table and both Flow YAMLs must name exactly those, with the same defaults."""

from __future__ import annotations

import re

from demo import REPO
from executors.flow_env import FLOW_SETTINGS

YAMLS = ("flow.yml", "flow.scaled.yml")


def readme_settings_table() -> dict[str, str]:
    """variable -> default cell of the README's settings table (rows naming several variables
    give each its part of the cell)."""
    text = (REPO / "README.md").read_text()
    table = text.split("| variable | default |", 1)[1].split("\n\n", 1)[0]
    rows: dict[str, str] = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        names = re.findall(r"`([A-Z_]+)`", cells[0])
        defaults = [d.strip() for d in re.split(r",\s(?![^`]*`)", cells[1])]
        for i, name in enumerate(names):
            rows[name] = defaults[i] if len(defaults) == len(names) else cells[1]
    return rows


def test_the_readme_lists_every_setting_with_its_default():
    table = readme_settings_table()
    assert set(table) == set(FLOW_SETTINGS)
    for name, (default, _) in FLOW_SETTINGS.items():
        if default:
            assert default in table[name].strip("`"), (name, default, table[name])


def test_both_flow_yamls_read_only_the_listed_settings_and_together_all_of_them():
    def settings_read(yml: str) -> set[str]:
        lines = (REPO / yml).read_text().splitlines()
        code = "\n".join(line.split("#", 1)[0] for line in lines)  # comments do not count
        return set(re.findall(r"\$\{\{ ENV\.([A-Z_]+) \}\}", code))

    used = {yml: settings_read(yml) for yml in YAMLS}
    for yml, names in used.items():
        assert names <= set(FLOW_SETTINGS), (yml, names - set(FLOW_SETTINGS))
    assert set().union(*used.values()) == set(FLOW_SETTINGS)
