"""The PATCH content types of the API server ("Update API Objects in Place Using kubectl patch").

- ``application/json-patch+json``: RFC 6902; a failed ``test`` or a missing path is 422.
- ``application/merge-patch+json``: RFC 7386; ``null`` removes a key, lists are replaced.
- ``application/strategic-merge-patch+json``: built-in kinds only (415 for custom resources, as
  the server answers); approximated as a merge patch whose lists of named objects (containers,
  env, volumes, ports...) merge by ``name``, with ``$patch: delete`` and ``$setElementOrder`` read.
- ``application/apply-patch+yaml`` (server-side apply): approximated as a merge patch of the
  applied configuration with its nulls ignored, so re-applying the same file changes nothing;
  field ownership (``managedFields``) is not tracked, so a field dropped from the file stays.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import jsonpointer
import yaml

from . import statuses

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
CUSTOM_RESOURCE_PATCHES = (JSON_PATCH, MERGE_PATCH, APPLY_PATCH)
BUILTIN_PATCHES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, APPLY_PATCH)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _strategic(target: Any, patch: Any) -> Any:
    if isinstance(patch, dict) and patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if not isinstance(patch, dict) or not isinstance(target, dict):
        return merge_patch(target, patch)
    result = copy.deepcopy(target)
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key in ("$retainKeys", "$patch"):
            continue
        if value is None:
            result.pop(key, None)
        elif (
            isinstance(value, list)
            and isinstance(result.get(key), list)
            and _named(value)
            and _named(result[key])
        ):
            merged = {item["name"]: item for item in result[key]}
            for item in value:
                if item.get("$patch") == "delete":
                    merged.pop(item["name"], None)
                else:
                    merged[item["name"]] = _strategic(merged.get(item["name"]), item)
            result[key] = list(merged.values())
        else:
            result[key] = _strategic(result.get(key), value)
    return result


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def apply_patch(content_type: str, current: dict[str, Any], body: bytes, *, custom: bool) -> dict[str, Any]:
    """The object after applying ``body`` of ``content_type`` to ``current`` (APIError if it cannot be)."""
    media = content_type.split(";")[0].strip()
    accepted = CUSTOM_RESOURCE_PATCHES if custom else BUILTIN_PATCHES
    if media not in accepted:
        raise statuses.unsupported_media_type(media, accepted)
    try:
        patch = yaml.safe_load(body) if media == APPLY_PATCH else json.loads(body or b"null")
    except (yaml.YAMLError, ValueError) as exc:
        raise statuses.bad_request(f"error decoding patch: {exc}") from exc
    if media == JSON_PATCH:
        if not isinstance(patch, list):
            raise statuses.bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
        try:
            return jsonpatch.apply_patch(current, patch)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise statuses.unprocessable(
                f"the server rejected our request due to an error in our request: {exc}"
            ) from exc
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            raise statuses.unprocessable(
                f"the server rejected our request due to an error in our request: {exc}"
            ) from exc
    if not isinstance(patch, dict):
        raise statuses.bad_request(
            "json: cannot unmarshal array into Go value of type map[string]interface {}"
        )
    if media == STRATEGIC_MERGE_PATCH:
        return _strategic(current, patch)
    if media == APPLY_PATCH:
        patch = _without_nulls(patch)
    return merge_patch(current, patch)


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value
