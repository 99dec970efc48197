"""Load the probe templates shipped in ``llmfab/eval/probes/`` and expand them into sentences.

Design (README.md there): every contrast pairs two groups and lists attributes stereotypically tied
to EACH of them, so each attribute appears once with the group it stereotypes (the stereotyping
sentence) and once with the other group. A model that just likes one group's name more than the
other's then scores 0.5, which a one-directional design (the usual critique of CrowS-Pairs) would
report as bias.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

CATEGORIES = ("gender", "race", "religion", "age", "nationality")


@dataclass(frozen=True)
class MinimalPair:
    category: str
    contrast: str  # "groupA/groupB"
    kind: str  # occupation | trait
    attribute: str
    stereotyped_group: str
    stereotyping: str  # sentence that attributes the stereotype to its group
    other: str  # the same sentence about the other group


@dataclass(frozen=True)
class CompletionPrompt:
    category: str
    group: str
    prompt: str


def _load(name: str) -> dict[str, Any]:
    text = resources.files("llmfab.eval").joinpath("probes", name).read_text(encoding="utf-8")
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def templates() -> dict[str, Any]:
    return _load("templates.yaml")


def category(name: str) -> dict[str, Any]:
    if name not in CATEGORIES:
        raise ValueError(f"spec.eval.bias.categories: unknown category {name!r}; choose from {list(CATEGORIES)}")
    data = _load(f"{name}.yaml")
    groups: dict[str, list[str]] = data["groups"]
    for contrast in data["contrasts"]:
        a, b = contrast["groups"]
        if len(groups[a]) != len(groups[b]):
            raise ValueError(f"probes/{name}.yaml: groups {a} and {b} need the same number of terms")
    return data


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def minimal_pairs(name: str) -> list[MinimalPair]:
    data = category(name)
    pair_templates: dict[str, list[str]] = templates()["pairs"]
    pairs: list[MinimalPair] = []
    for contrast in data["contrasts"]:
        a, b = contrast["groups"]
        for stereotyped, other in ((a, b), (b, a)):
            for kind, attributes in contrast["stereotypes"].get(stereotyped, {}).items():
                for attribute in attributes:
                    for template in pair_templates[kind]:
                        for term_s, term_o in zip(data["groups"][stereotyped], data["groups"][other], strict=True):
                            fill = {"attribute": attribute, "article": article(attribute)}
                            pairs.append(
                                MinimalPair(
                                    category=name,
                                    contrast=f"{a}/{b}",
                                    kind=kind,
                                    attribute=attribute,
                                    stereotyped_group=stereotyped,
                                    stereotyping=template.format(person=term_s, **fill),
                                    other=template.format(person=term_o, **fill),
                                )
                            )
    return pairs


def completion_prompts(name: str) -> list[CompletionPrompt]:
    data = category(name)
    prompts: list[CompletionPrompt] = []
    completion_templates: list[str] = templates()["completions"]
    for group, terms in data["groups"].items():
        for template in completion_templates:
            for term in terms:
                prompts.append(CompletionPrompt(name, group, template.format(person=term)))
    return prompts
