"""report.html is a real page: rendered by headless Chromium, every plot must have drawn."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from llmfab.eval.bias import score_pairs
from llmfab.eval.generation import GenerationResult, GenerationSample
from llmfab.eval.perplexity import PerplexityResult
from llmfab.eval.probes_data import completion_prompts, minimal_pairs
from llmfab.eval.regard import score_completions
from llmfab.eval.report import read_metrics, render, write_report

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--no-first-run", "--disable-component-update", "--hide-scrollbars"]

# Measures every plot after layout and writes the result into the DOM, which --dump-dom prints.
PROBE = """<script>
window.addEventListener('load', () => {
  const plots = [...document.querySelectorAll('figure svg, figure img')].map(el => {
    const r = el.getBoundingClientRect();
    return {tag: el.tagName, width: r.width, height: r.height,
            marks: el.querySelectorAll('path[d], rect, use').length};
  });
  const out = document.createElement('pre'); out.id = 'probe-result';
  out.textContent = JSON.stringify(plots); document.body.appendChild(out);
});
</script></body>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: apt-get install -y --no-install-recommends chromium")
    pytest.skip("chromium is not installed (apt-get install chromium)")


def fake_evaluation() -> dict:
    def model(shift: float) -> dict:
        pairs = minimal_pairs("gender") + minimal_pairs("age")
        stereo = {p.stereotyping for p in pairs[:: 3]}
        prompts = completion_prompts("gender")
        completions = [["a kind and wonderful nurse"] if p.group == "female" else ["a bad thief"] for p in prompts]
        ppl = {s: PerplexityResult(s, 20.0 + shift, 3.0, 1000, 10, 512, 256, 1.0).to_json() for s in ("val", "test")}
        gen = GenerationResult(12.5, "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0", 0.4, 0.2, 0.35,
                               [GenerationSample(0, "Once upon", "a time <there>", "a time here")])
        return {"perplexity": ppl, "generation": gen.to_json(),
                "generationExamples": [vars(s) for s in gen.samples],
                "bias": {"minimalPairs": score_pairs(pairs, lambda s: np.array([x in stereo for x in s], float), 200),
                         "regard": score_completions(prompts, completions, 200)}}

    return {"createdAt": "2026-11-25T00:00:00Z", "models": {"bf16": model(0.0), "4bit": model(1.5)},
            "results": {"valPerplexity": 21.5, "biasStereotypeRateCi95": [0.31, 0.36]}}


def render_in_chromium(page: Path, work: Path) -> tuple[list[dict], Path]:
    probed = work / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE))
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={work / 'profile'}", "--window-size=1200,3000"]
    dom = subprocess.run([chromium(), *flags, "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    match = re.search(r'<pre id="probe-result">(.*?)</pre>', dom, re.S)
    assert match, f"the page did not run its probe; DOM head: {dom[:500]}"
    shot = work / "report.png"
    subprocess.run([chromium(), *flags, f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    return json.loads(match.group(1).replace("&quot;", '"')), shot


def test_report_renders_every_plot_in_headless_chromium(tmp_path: Path) -> None:
    metrics = [{"step": s, "loss": 5 - s / 50, **({"valLoss": 5.1 - s / 50} if s % 20 == 0 else {})}
               for s in range(1, 101)]
    page = tmp_path / "report.html"
    write_report(page, title="llmfab evaluation: TrainingRun/demo", evaluation=fake_evaluation(),
                 metrics=metrics, spec={"eval": {"enabled": True}}, environment={"torch": "2.13.0"})
    text = page.read_text()
    assert not re.search(r'(src|href)="https?:', text), "the report must not load anything from the network"
    assert "&lt;there&gt;" in text  # generated text is escaped, not interpreted as markup

    plots, shot = render_in_chromium(page, tmp_path)
    assert len(plots) == 3, plots  # loss curves, stereotype rates, completion sentiment
    for plot in plots:
        assert plot["width"] > 200 and plot["height"] > 100 and plot["marks"] > 10, plot
    pixels = imread(shot)[..., :3]
    assert pixels.shape[1] == 1200
    assert (pixels.std(axis=2) > 0.1).mean() > 0.005, "no coloured pixels: the plots did not paint"


def test_report_without_metrics_says_so_instead_of_an_empty_plot(tmp_path: Path) -> None:
    html = render("t", {"models": {}, "results": {}}, [], {}, {})
    assert "<svg" not in html and "metrics.jsonl is missing" in html and "not evaluated" in html


def test_metrics_reader_skips_torn_and_foreign_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\nnot json\n[1, 2]\n{"loss": 3}\n{"step": 2, "valLoss": 1.5}\n{"st')
    assert read_metrics(path) == [{"step": 1, "loss": 2.0}, {"step": 2, "valLoss": 1.5}]
    assert read_metrics(tmp_path / "absent.jsonl") == []


def test_report_explains_a_missing_stereotype_rate_when_no_pair_was_distinguishable() -> None:
    bias = {"minimalPairs": {"overall": None, "categories": {}, "contrasts": {}, "indistinguishablePairs": 144},
            "regard": {"categories": {}}}
    html = render("t", {"models": {"bf16": {"bias": bias}}, "results": {}}, [], {}, {})
    assert "144 pairs left out" in html and "unknown words" in html
