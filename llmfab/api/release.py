"""``spec.release``: what a model's card says about how it may be used (TrainingRun, RewardModel,
InferenceService).

The licence is never guessed. A model trained from scratch (a pretrain or distill run without
``initFrom.trainingRun``, an InferenceService serving a directory by path) is refused at validation
without ``spec.release.license``; a model made from another llmfab model (SFT, RL, a RewardModel, a
quantized service of a TrainingRun) takes that model's licence when it names none: the user said it
once, where the weights were first made. The card says which it was.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import Field, field_validator

from llmfab.api.common import CelRule, Spec

# The licence identifiers the Hugging Face Hub accepts in a card's ``license`` field
# (huggingface.co/docs/hub/repositories-licenses). ``other`` needs licenseName and licenseLink.
HUB_LICENSES: tuple[str, ...] = (
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m",
    "bigscience-bloom-rail-1.0", "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd",
    "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0",
    "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0",
    "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0",
    "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0",
    "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1", "eupl-1.2", "agpl-3.0", "gfdl",
    "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "h-research", "intel-research",
    "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr", "mpl-2.0", "odc-by", "odbl", "openrail++",
    "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl", "lgpl-lr",
    "deepfloyd-if-license", "fair-noncommercial-research-license", "llama2", "llama3", "llama3.1",
    "llama3.2", "llama3.3", "llama4", "gemma", "unknown", "other",
)
LICENSE_HINT = "a Hugging Face licence id such as apache-2.0, mit or cc-by-4.0, or other with licenseName and licenseLink"
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
_REPO_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$"


def _other_is_named(r: Any) -> str | None:
    if r.license == "other" and (not r.license_name or not r.license_link):
        return "spec.release: license other needs licenseName (a short id) and licenseLink (the licence's text)"
    return None


class Release(Spec):
    """The model card's terms: licence, languages, tags, intended use and limitations.

    Changing it does not retrain or re-quantize (it is left out of the spec hash): the next run
    of the resource, a no-op otherwise, writes the card again (``llmfab card`` prints it)."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            cel="!has(self.license) || self.license != 'other' || (has(self.licenseName) && has(self.licenseLink))",
            message="license other needs licenseName and licenseLink",
            check=_other_is_named,
        ),
    )

    license: str | None = Field(
        default=None,
        description=f"The licence the model is released under: {LICENSE_HINT}. Required for a model made "
        "from scratch; a model made from another llmfab model (initFrom.trainingRun, a RewardModel's base, "
        "a served TrainingRun) takes that model's when unset.",
        json_schema_extra={"enum": list(HUB_LICENSES)},
    )
    license_name: str | None = Field(default=None, max_length=64, description="With license other: its short id.")
    license_link: str | None = Field(default=None, max_length=2048, description="With license other: where its text is.")
    language: list[str] = Field(
        default_factory=list, max_length=32,
        description="ISO 639 codes of the text the model was trained on (e.g. en); unset: the card names none.",
    )
    tags: list[str] = Field(default_factory=list, max_length=32, description="Extra card tags, besides llmfab's own.")
    repo_id: str | None = Field(
        default=None, pattern=_REPO_ID,
        description="The Hub id the model will be published as (owner/name); the cards of models made from "
        "it name it as their base_model (else they name the llmfab resource).",
    )
    intended_use: str | None = Field(
        default=None, max_length=8000,
        description="What the model is for; unset: a default that says what a small model trained from "
        "scratch is and is not fit for.",
    )
    limitations: str | None = Field(
        default=None, max_length=8000,
        description="Known limitations and risks; unset: the default for a small model trained from scratch.",
    )

    @field_validator("license")
    @classmethod
    def _known_license(cls, value: str | None) -> str | None:
        if value is not None and value not in HUB_LICENSES:
            raise ValueError(f"license {value!r} is not a licence id the Hugging Face Hub knows; use {LICENSE_HINT}")
        return value

    @field_validator("language")
    @classmethod
    def _iso_codes(cls, value: list[str]) -> list[str]:
        for code in value:
            if not _LANGUAGE.fullmatch(code):
                raise ValueError(f"language {code!r} is not an ISO 639 code; write e.g. en, de or pt-BR")
        return value


RELEASE_DESCRIPTION = (
    "The model card's terms (README.md in every exported model directory): licence, languages, tags, "
    "intended use, limitations."
)


def license_required(has_parent: bool, release: Release, what: str = "a model trained from scratch") -> str | None:
    """The message naming ``spec.release.license`` when a model made from scratch (or served from a
    directory, ``what``) has none."""
    if has_parent or release.license is not None:
        return None
    return (f"spec.release.license: {what} needs the licence it is released under: "
            f"{LICENSE_HINT}; nothing is assumed (a model made from another llmfab model, by initFrom.trainingRun "
            "or an InferenceService's model.trainingRun, inherits that one's)")
