"""What a cascade drew, as the world reader saw it: per-sample summaries and the objects drawn per count asked.

``cascade eval`` scores each attribute right or wrong; these say *how* a render was wrong. The
count is the attribute the shapes-world base gets wrong most often in one-group scenes, and a
score alone cannot tell "drew three where two were asked" from "drew two cubes and a sphere":
:func:`objects_drawn` counts every object the reader found, whatever its colour or shape. In
two-group scenes ("a red cube to the left of a blue star") :func:`two_groups_drawn` tells a base
that draws both objects alike (one group read) from one that draws them right but in the wrong places.
"""

from __future__ import annotations

from typing import Any

MANY = 5  # drawn counts at or above this share one column ("5+")


def reading_summary(reading: Any) -> dict[str, Any]:
    """A JSON-ready summary of a :class:`~data_pipeline.world.Reading`: time, ground, relation and,
    per group, colour, shape, count, centre (x, y in [0, 1], y downward) and motion (clips)."""
    groups = []
    for group in reading.groups:
        entry = {"colour": group.colour, "shape": group.shape, "count": group.count,
                 "centre": [round(float(group.centre[0]), 3), round(float(group.centre[1]), 3)]}
        if group.motion is not None:
            entry["motion"] = group.motion
        groups.append(entry)
    return {"time": reading.time, "ground": reading.ground, "relation": reading.relation, "groups": groups}


def objects_drawn(scenes: list[Any], readings: list[Any]) -> dict[str, dict[str, int]]:
    """For one-group scenes: asked count (``"1"``, ``"2"``, ``"3"``) -> {objects the reader found in
    all groups together (``"0"`` .. ``"4"``, ``"5+"``): how many renders}. Two-group scenes are left
    out (each of their groups is one object, which the relation and colour scores already judge)."""
    table: dict[str, dict[str, int]] = {}
    for scene, reading in zip(scenes, readings, strict=True):
        if len(scene.groups) != 1:
            continue
        found = sum(group.count for group in reading.groups)
        column = f"{MANY}+" if found >= MANY else str(found)
        row = table.setdefault(str(scene.groups[0].count), {})
        row[column] = row.get(column, 0) + 1
    return {asked: table[asked] for asked in sorted(table)}


def markdown_drawn_table(drawn: dict[str, dict[str, int]]) -> str:
    """:func:`objects_drawn` as a Markdown table: one row per count asked, one column per count found;
    empty when no scene had one group."""
    if not drawn:
        return ""
    columns = [str(n) for n in range(MANY)] + [f"{MANY}+"]
    head = "| asked | n | " + " | ".join(f"found {c}" for c in columns) + " |\n|" + "---|" * (len(columns) + 2) + "\n"
    rows = [f"| {asked} | {sum(row.values())} | " + " | ".join(str(row.get(c, 0)) for c in columns) + " |"
            for asked, row in drawn.items()]
    return "**objects drawn in one-group scenes**\n\n" + head + "\n".join(rows) + "\n"


def two_groups_drawn(scenes: list[Any], readings: list[Any], scores: list[dict[str, bool | None]]) -> dict[str, Any]:
    """For two-group scenes: how many groups the reader found (``"0"`` .. ``"2"``, ``"3+"``: how many
    renders), how many drew both objects right (colour, shape and count of both, nothing more) and
    how many of those stand in the asked relation. Empty when no scene had two groups."""
    read = {"0": 0, "1": 0, "2": 0, "3+": 0}
    n = objects_right = relation_right = 0
    for scene, reading, score in zip(scenes, readings, scores, strict=True):
        if len(scene.groups) != 2:
            continue
        n += 1
        found = len(reading.groups)
        read["3+" if found >= 3 else str(found)] += 1
        if score["colour"] and score["shape"] and score["count"]:
            objects_right += 1
            relation_right += bool(score["relation"])
    if not n:
        return {}
    return {"n": n, "groups_read": read, "objects_right": objects_right, "relation_right_of_those": relation_right}


def markdown_two_groups_table(drawn: dict[str, Any]) -> str:
    """:func:`two_groups_drawn` as a one-row Markdown table; empty when no scene had two groups."""
    if not drawn:
        return ""
    read, right = drawn["groups_read"], drawn["objects_right"]
    share = f" ({drawn['relation_right_of_those'] / right:.0%})" if right else ""
    return ("**two-group scenes**\n\n| n | groups read: 0 | 1 | 2 | 3+ | both objects right "
            "| in the asked relation, of those |\n|---|---|---|---|---|---|---|\n"
            f"| {drawn['n']} | {read['0']} | {read['1']} | {read['2']} | {read['3+']} | {right} | "
            f"{drawn['relation_right_of_those']}{share} |\n")
