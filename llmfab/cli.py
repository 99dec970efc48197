"""The ``llmfab`` command: validate, generate CRDs, run a pipeline locally, inspect it, run one stage.

Kept thin: every command parses its arguments and calls a function that does the work
(``llmfab.api``, ``llmfab.local``, ``llmfab.workload``), so the same logic is testable without a
terminal.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from llmfab import __version__

app = typer.Typer(
    name="llmfab",
    help="Raw text to a 4-bit quantized, monitored LLM endpoint: on one machine or a k3s cluster.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
# Errors are not wrapped: they name paths and the command to run, which a reader copies whole.
err_console = Console(stderr=True, soft_wrap=True)

FilesOption = Annotated[
    list[Path], typer.Option("-f", "--filename", help="YAML file or directory (repeatable).")
]


def _write_or_check(out: Path, text: str, check: bool, up_to_date: str, command: str) -> None:
    """Write a generated file (atomically), or with ``check`` exit 1 when the committed one differs."""
    from llmfab.store import write_text_atomic

    if check:
        if not out.exists() or out.read_text() != text:
            err_console.print(f"out of date: {out}; run `llmfab {command} --out {out}`")
            raise typer.Exit(1)
        console.print(up_to_date)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, text)
    console.print(f"wrote {out}")


def _check_name(value: str | None) -> str | None:
    """Every resource name the CLI takes is checked as the API checks ``metadata.name``: the store
    makes paths of names, and ``""``, ``..`` or ``/tmp`` would name a directory that is not the
    resource's own (``llmfab delete dataset ""`` once removed every Dataset)."""
    from llmfab.store import InvalidName, check_name

    if value is None:
        return None
    try:
        return check_name(value)
    except InvalidName as e:
        raise typer.BadParameter(str(e)) from None


def _check_kind(value: str | None) -> str | None:
    from llmfab.api import ValidationFailed, resource_class

    if value is None:
        return None
    try:
        return resource_class(value).KIND
    except ValidationFailed as e:
        raise typer.BadParameter("; ".join(e.errors)) from None


def _name_argument(help_text: str) -> Any:
    return typer.Argument(help=help_text, callback=_check_name, show_default=False)


def _kind_argument(help_text: str) -> Any:
    return typer.Argument(help=help_text, callback=_check_kind, show_default=False)


@app.command()
def version() -> None:
    """Print llmfab's version."""
    console.print(__version__)


@app.command()
def validate(files: FilesOption) -> None:
    """Validate resources; print one line per problem (field, value, fix) and exit 2 if any."""
    from llmfab.api import ValidationFailed, load_resources

    try:
        resources = load_resources(files)
    except ValidationFailed as e:
        for line in e.errors:
            err_console.print(f"[red]error[/red]: {line}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    for res in resources:
        console.print(f"[green]valid[/green]: {res.key}", highlight=False)


@app.command()
def crds(
    out: Annotated[Path, typer.Option("--out", help="Directory for the CRD YAML files.")] = Path(
        "charts/llmfab/crds"
    ),
    check: Annotated[
        bool, typer.Option(help="Exit 1 if the files in --out differ from a fresh generation.")
    ] = False,
) -> None:
    """Generate the CustomResourceDefinitions from the API models."""
    from llmfab.api.crds import crd_filename, render_crd, write_crds
    from llmfab.api.loading import KINDS

    if check:
        stale = [
            crd_filename(cls)
            for cls in KINDS.values()
            if not (out / crd_filename(cls)).exists()
            or (out / crd_filename(cls)).read_text() != render_crd(cls)
        ]
        if stale:
            err_console.print(f"out of date: {', '.join(stale)}; run `llmfab crds --out {out}`")
            raise typer.Exit(1)
        console.print("CRDs are up to date")
        return
    for path in write_crds(out):
        console.print(f"wrote {path}")


@app.command()
def rbac(
    out: Annotated[Path, typer.Option("--out", help="The chart's rules file.")] = Path(
        "charts/llmfab/files/rbac-rules.yaml"
    ),
    check: Annotated[bool, typer.Option(help="Exit 1 if --out differs from a fresh generation.")] = False,
) -> None:
    """Generate the operator's and workloads' RBAC rules for the chart."""
    from llmfab.operator.rbac import render_rules

    _write_or_check(out, render_rules(), check, "RBAC rules are up to date", "rbac")


@app.command()
def docs(
    out: Annotated[Path, typer.Option("--out", help="The API reference page.")] = Path("docs/api.md"),
    check: Annotated[bool, typer.Option(help="Exit 1 if --out differs from a fresh generation.")] = False,
) -> None:
    """Generate the API reference (docs/api.md) from the API models, as `llmfab explain` reads them."""
    from llmfab.api.loading import KINDS
    from llmfab.api.reference import render_reference

    _write_or_check(out, render_reference(KINDS), check, "API reference is up to date", "docs")


@app.command()
def explain(
    target: Annotated[str, typer.Argument(help="KIND or KIND.field.path, e.g. trainingrun.spec.model")],
) -> None:
    """Describe a kind's fields, like `kubectl explain`."""
    from llmfab.local.explain import explain_text

    try:
        console.print(explain_text(target), highlight=False, markup=False)
    except KeyError as e:
        err_console.print(f"error: {e.args[0]}")
        raise typer.Exit(2) from None


@app.command()
def up(
    files: FilesOption,
    only: Annotated[
        list[str] | None, typer.Option("--only", help="Run only these resources (NAME or KIND/NAME).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even when the artifacts match the spec.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and exit.")] = False,
    detach: Annotated[bool, typer.Option(help="Leave servers running in the background.")] = False,
) -> None:
    """Run every resource's workload as local processes, in dependency order."""
    from llmfab import signals
    from llmfab.local.runner import run_up

    code = signals.main(
        lambda: run_up(files, only=only or [], force=force, dry_run=dry_run, detach=detach, console=console)
    )
    raise typer.Exit(code)


@app.command()
def down(
    name: Annotated[str | None, _name_argument("InferenceService to stop; default: all.")] = None,
) -> None:
    """Stop servers that `llmfab up --detach` left running."""
    from llmfab import signals
    from llmfab.local.runner import run_down

    raise typer.Exit(signals.main(lambda: run_down(name, console=console)))


@app.command()
def get(
    kind: Annotated[str | None, _kind_argument("Kind, plural or short name; default: all kinds.")] = None,
    name: Annotated[str | None, _name_argument("Resource name.")] = None,
) -> None:
    """Table of local resources and their phase (from the artifact store's status files)."""
    from llmfab.local.inspect import get_table

    console.print(get_table(kind, name))


@app.command()
def describe(
    kind: Annotated[str, _kind_argument("Kind, plural or short name.")],
    name: Annotated[str, _name_argument("Resource name.")],
) -> None:
    """Spec, status, conditions, events and artifact paths of one local resource."""
    from llmfab.api import ValidationFailed
    from llmfab.local.inspect import describe_text

    try:
        console.print(describe_text(kind, name), highlight=False, markup=False)
    except (ValidationFailed, LookupError) as e:
        err_console.print(f"error: {e}")
        raise typer.Exit(1) from None


@app.command()
def card(
    kind: Annotated[str, _kind_argument("TrainingRun, RewardModel or InferenceService (or a plural or short name).")],
    name: Annotated[str, _name_argument("Resource name.")],
    check: Annotated[bool, typer.Option("--check", help="Also check its metadata; exit 1 on a problem.")] = False,
) -> None:
    """Print a local model's card (README.md: licence, data, training chain, evaluation and bias,
    compression, intended use), with its status as it is now."""
    from llmfab.api import ValidationFailed
    from llmfab.cards.metadata import check as problems
    from llmfab.local.card import card as model_card

    try:
        rendered = model_card(kind, name)
    except (ValidationFailed, LookupError) as e:
        err_console.print(f"error: {e}")
        raise typer.Exit(1) from None
    print(str(rendered), end="")
    if check and (found := problems(rendered)):
        for problem in found:
            err_console.print(f"error: {problem}")
        raise typer.Exit(1)


@app.command()
def usage(
    kind: Annotated[str | None, _kind_argument("Kind, plural or short name; default: all kinds.")] = None,
    name: Annotated[str | None, _name_argument("Resource name: it and every resource it references, summed.")] = None,
) -> None:
    """What local resources used (attempts, wall, CPU and GPU time, energy, cost) and their total;
    with KIND NAME, a resource and everything it references, e.g. a whole post-training chain."""
    from llmfab.local.usage_report import usage_table
    from llmfab.store import artifact_root

    console.print(usage_table(kind, name, artifact_root()))


@app.command()
def delete(
    kind: Annotated[str, _kind_argument("Kind, plural or short name.")],
    name: Annotated[str, _name_argument("Resource name.")],
) -> None:
    """Remove a resource's artifacts and records from the local store (what the operator runs for
    `deletionPolicy: Delete`, once the resource's pods are gone)."""
    from llmfab.api import resource_class
    from llmfab.store import delete_artifacts

    cls = resource_class(kind)
    removed = delete_artifacts(cls.ARTIFACT_DIR, name)
    if not removed:
        console.print(f"{cls.KIND}/{name}: nothing to delete")
    for path in removed:
        console.print(f"deleted {path}")


@app.command()
def export(
    name: Annotated[str, _name_argument("TrainingRun whose checkpoint to export.")],
    step: Annotated[
        int | None, typer.Option(help="Checkpoint step; default: the latest complete one.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory; default: runs/NAME/model.")] = None,
    force: Annotated[
        bool, typer.Option(help="Replace --out even if it is not a model directory llmfab exported.")
    ] = False,
) -> None:
    """Write a TrainingRun's Hugging Face model/ from a checkpoint (e.g. of a run still training)."""
    from llmfab.store import artifact_root, replace_refusal

    if out is not None and not force:
        problem = replace_refusal(out, "HFModel")
        if problem:
            raise typer.BadParameter(problem, param_hint="'--out'")
    from llmfab.training.export_checkpoint import ExportError, export_named_run

    try:
        path = export_named_run(name, artifact_root(), step, out)
    except ExportError as e:
        err_console.print(f"error: {e}")
        raise typer.Exit(1) from None
    console.print(f"exported {path}")


@app.command()
def chat(
    name: Annotated[str, _name_argument("InferenceService to talk to (reads its URL from status).")],
    url: Annotated[str | None, typer.Option(help="OpenAI API base URL instead of the status file's.")] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Tokens per answer.")] = 128,
) -> None:
    """Interactive chat with a served model (streams from /v1/chat/completions)."""
    from llmfab.serving.chat import chat_loop

    raise typer.Exit(chat_loop(name, url=url, system=system, max_tokens=max_tokens))


feedback_app = typer.Typer(help="Human feedback of an InferenceService's feedback app.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")


@feedback_app.command("export")
def feedback_export(
    name: Annotated[str, _name_argument("InferenceService whose feedback.sqlite to read.")],
    out: Annotated[Path, typer.Option("--out", help="JSONL file of {prompt, chosen, rejected} pairs.")],
) -> None:
    """Write the votes as preference pairs (a RewardModel's spec.preferences.path); ties are skipped.
    The store is opened read-only (the running app stays its one writer) and --out is replaced whole."""
    from llmfab.api.inference_service import InferenceService
    from llmfab.serving.feedback_store import FILENAME, export_preferences
    from llmfab.store import artifact_dir

    try:
        count = export_preferences(artifact_dir(InferenceService.ARTIFACT_DIR, name) / FILENAME, out)
    except (OSError, ValueError) as e:  # no store, not a store (NotAFeedbackStore), --out unwritable
        err_console.print(f"error: {e}")
        raise typer.Exit(1) from None
    console.print(f"wrote {count} preference pairs to {out}")


def _stage_app(stage: str, summary: str) -> typer.Typer:
    sub = typer.Typer(help=summary, no_args_is_help=True)

    @sub.command("run")
    def run(
        spec: Annotated[Path, typer.Option("--spec", help="YAML file with one resource.")],
        force: Annotated[bool, typer.Option(help="Rebuild even when up to date.")] = False,
    ) -> None:
        """Run this stage on one resource (the container entrypoint)."""
        from llmfab import signals
        from llmfab.workload import run_stage

        code = signals.main(lambda: run_stage(stage, spec, force=force))
        if stage == "train" and code:  # a failed torchrun rank (when torchrun runs this directly)
            from llmfab.training.components.distributed import exit_worker

            exit_worker(code)
        sys.exit(code)

    return sub


def _add_stage_apps() -> None:
    from llmfab.stages import STAGES

    for stage in STAGES.values():
        app.add_typer(_stage_app(stage.name, stage.summary), name=stage.name)


_add_stage_apps()


if __name__ == "__main__":
    app()
