"""Who the patients are: names, sex and birth dates, including people on the age limits."""

from __future__ import annotations

import random
from datetime import date

from fhir_match.synth.facts import Person
from fhir_match.synth.timeline import iso, shift, years_before

__all__ = ["AGE_EDGES", "make_person", "patient_id"]

_FAMILY = (
    ("Wang", "王"), ("Li", "李"), ("Zhang", "张"), ("Liu", "刘"), ("Chen", "陈"), ("Yang", "杨"),
    ("Huang", "黄"), ("Zhao", "赵"), ("Wu", "吴"), ("Zhou", "周"), ("Xu", "徐"), ("Sun", "孙"),
    ("Ma", "马"), ("Zhu", "朱"), ("Hu", "胡"), ("Guo", "郭"), ("He", "何"), ("Lin", "林"),
)  # fmt: skip
_GIVEN_FEMALE = (
    ("Fang", "芳"), ("Min", "敏"), ("Jing", "静"), ("Li", "丽"), ("Yan", "艳"), ("Juan", "娟"),
    ("Xia", "霞"), ("Ting", "婷"), ("Hui", "慧"), ("Lan", "兰"),
)  # fmt: skip
_GIVEN_MALE = (
    ("Wei", "伟"), ("Qiang", "强"), ("Lei", "磊"), ("Jun", "军"), ("Yong", "勇"), ("Jie", "杰"),
    ("Tao", "涛"), ("Ming", "明"), ("Chao", "超"), ("Hao", "浩"),
)  # fmt: skip

AGE_EDGES = (
    "inc1-18th-birthday-on-D",
    "inc1-day-before-18th-birthday",
    "inc1-65-day-before-66th-birthday",
    "inc1-66th-birthday-on-D",
    "inc1-birth-year-only-decides",
    "inc1-birth-year-only-undecided",
    "inc1-birth-month-decides",
    "inc1-no-birth-date",
)
"""Birth dates on or near the 18-65 limits, and partial or missing ones."""


def patient_id(seed: int, index: int) -> str:
    """Stable across runs and distinct across seeds, so two populations can share a server."""
    return f"syn{seed}-{index:07d}"


def _age(rng: random.Random, itp: bool) -> int:
    """A hospital's adults (few teenagers); ITP patients a little younger (incidence peaks in
    young women and again after 60)."""
    if itp:
        return rng.choice((rng.randint(16, 45), rng.randint(18, 65), rng.randint(40, 85)))
    return rng.choice((rng.randint(15, 40), rng.randint(30, 70), rng.randint(45, 92)))


def _birth_date(rng: random.Random, as_of: date, age: int) -> str:
    birthday = years_before(as_of, age)
    day = shift(birthday, -rng.randint(1, 364))
    if day.month == 2 and day.day == 29:
        day = shift(day, -1)  # whole-year ages of 29 February birthdays differ between engines
    return iso(day)


def _edge_birth_date(edge: str, rng: random.Random, as_of: date) -> str | None:
    if edge == "inc1-18th-birthday-on-D":
        return iso(years_before(as_of, 18))
    if edge == "inc1-day-before-18th-birthday":
        return iso(shift(years_before(as_of, 18), 1))
    if edge == "inc1-65-day-before-66th-birthday":
        return iso(shift(years_before(as_of, 66), 1))
    if edge == "inc1-66th-birthday-on-D":
        return iso(years_before(as_of, 66))
    if edge == "inc1-birth-year-only-decides":
        return str(as_of.year - rng.randint(25, 60))
    if edge == "inc1-birth-year-only-undecided":
        return str(as_of.year - rng.choice((18, 66)))
    if edge == "inc1-birth-month-decides":
        return years_before(as_of, rng.randint(25, 60)).strftime("%Y-%m")
    return None


def make_person(
    rng: random.Random, seed: int, index: int, as_of: date, itp: bool, age_edge: str | None
) -> Person:
    roll = rng.random()
    gender = "female" if roll < 0.5 + (0.1 if itp else 0.0) else "male"
    if rng.random() < 0.003:
        gender = rng.choice(("unknown", "other"))
    family, family_zh = rng.choice(_FAMILY)
    given, given_zh = rng.choice(_GIVEN_FEMALE if gender == "female" else _GIVEN_MALE)
    if age_edge is None:
        birth: str | None = _birth_date(rng, as_of, _age(rng, itp))
    else:
        birth = _edge_birth_date(age_edge, rng, as_of)
    return Person(
        patient_id(seed, index), index, gender, birth, family, given, family_zh + given_zh
    )
