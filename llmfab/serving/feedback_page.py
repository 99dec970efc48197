"""The feedback app's two pages: the voting page (one self-contained HTML file, no external assets,
usable on a phone) and the progress/agreement view."""

from __future__ import annotations

import html
from typing import Any

STYLE = """
:root { color-scheme: light dark; --accent: #2563eb; }
* { box-sizing: border-box; }
body { font: 18px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 52rem; padding: 12px; }
h1 { font-size: 1.2rem; margin: 0 0 8px; }
.prompt { font-weight: 600; white-space: pre-wrap; margin: 8px 0 12px; }
.answers { display: grid; gap: 10px; grid-template-columns: 1fr; }
@media (min-width: 700px) { .answers { grid-template-columns: 1fr 1fr; } }
.answer { border: 2px solid #8884; border-radius: 10px; padding: 10px; white-space: pre-wrap; min-height: 4rem; }
.answer b { display: block; color: var(--accent); }
textarea { width: 100%; min-height: 5rem; font: inherit; margin: 12px 0 8px; padding: 8px; border-radius: 8px; }
.buttons { display: grid; grid-template-columns: 1fr 1fr 1fr; gap: 10px; }
button { font: inherit; font-weight: 700; min-height: 56px; border-radius: 10px; border: 0;
         background: var(--accent); color: white; touch-action: manipulation; }
button:disabled { opacity: .4; }
#status { min-height: 1.5em; margin: 10px 0; }
table { border-collapse: collapse; width: 100%; }
td, th { border-bottom: 1px solid #8884; padding: 4px 6px; text-align: left; vertical-align: top; }
a { color: var(--accent); }
"""

VOTE_PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Which answer is better?</title><style>{STYLE}</style></head>
<body>
<h1>Which answer is better?</h1>
<div class="prompt" id="prompt">Loading…</div>
<div class="answers">
  <div class="answer" id="a"><b>A</b><span id="a-text"></span></div>
  <div class="answer" id="b"><b>B</b><span id="b-text"></span></div>
</div>
<label for="edit">Improve the better answer (optional):</label>
<textarea id="edit" placeholder="Your corrected answer replaces the chosen one"></textarea>
<div class="buttons">
  <button id="vote-a" data-choice="a" disabled>A</button>
  <button id="vote-tie" data-choice="tie" disabled>Tie</button>
  <button id="vote-b" data-choice="b" disabled>B</button>
</div>
<div id="status" role="status"></div>
<a href="stats">Progress and agreement</a>
<script>
let pair = null;
const buttons = [...document.querySelectorAll("button[data-choice]")];
const status = document.getElementById("status");
function busy(on) {{ buttons.forEach(b => b.disabled = on); }}
async function load() {{
  busy(true); pair = null;
  document.getElementById("a-text").textContent = "";
  document.getElementById("b-text").textContent = "";
  const r = await fetch("pair", {{credentials: "same-origin"}});
  const data = await r.json();
  if (!r.ok) {{ status.textContent = data.error || ("error " + r.status); return; }}
  pair = data;
  document.getElementById("prompt").textContent = data.prompt;
  document.getElementById("a-text").textContent = data.a;
  document.getElementById("b-text").textContent = data.b;
  document.body.dataset.pair = data.id;
  busy(false);
}}
async function vote(choice) {{
  if (!pair) return;
  busy(true);
  const edited = document.getElementById("edit").value.trim();
  const r = await fetch("vote", {{method: "POST", credentials: "same-origin",
    headers: {{"Content-Type": "application/json"}},
    body: JSON.stringify({{pair: pair.id, choice: choice, edited: edited || null}})}});
  const data = await r.json();
  if (!r.ok) {{ status.textContent = data.error || ("error " + r.status); busy(false); return; }}
  status.textContent = "Saved vote " + data.vote + " (" + choice.toUpperCase() + "). Next one…";
  document.body.dataset.lastVote = data.vote;
  document.getElementById("edit").value = "";
  load();
}}
buttons.forEach(b => b.addEventListener("click", () => vote(b.dataset.choice)));
load();
</script>
</body></html>
"""

UNAUTHORIZED_PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>401</title><style>{STYLE}</style></head>
<body><h1>Token required</h1><p>Open this page once as <code>/?token=YOUR_TOKEN</code> (it is then kept
in a cookie), or send <code>Authorization: Bearer YOUR_TOKEN</code>.</p></body></html>
"""


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def stats_page(stats: dict[str, Any]) -> str:
    share = stats["share"]
    rows = "".join(
        f"<tr><td>{a['pair']}</td><td>{html.escape(a['prompt'][:80])}</td><td>{a['votes']}</td>"
        f"<td>{a['a']}/{a['b']}/{a['tie']}</td><td>{_pct(a['agreement'])}</td></tr>"
        for a in stats["agreement"]
    )
    wins = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{n}</td></tr>" for k, n in stats["winsBySampling"].items()
    )
    mean = (
        "n/a (no pair has two votes yet)" if stats["meanAgreement"] is None else _pct(stats["meanAgreement"])
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Feedback progress</title>
<style>{STYLE}</style></head><body>
<h1>Progress</h1>
<p id="summary">{stats["votes"]} votes from {stats["voters"]} voters on {stats["pairsVoted"]} of
{stats["pairsShown"]} pairs shown ({stats["prompts"]} prompts).
A {_pct(share["a"])} · B {_pct(share["b"])} · tie {_pct(share["tie"])}.</p>
<h1>Wins by sampling setting</h1><table><tr><th>setting</th><th>wins</th></tr>{wins}</table>
<h1>Agreement</h1><p>Mean share agreeing with the majority, over pairs with two or more votes: {mean}.</p>
<table><tr><th>pair</th><th>prompt</th><th>votes</th><th>A/B/tie</th><th>agreement</th></tr>{rows}</table>
<p><a href="./">Back to voting</a> · <a href="stats.json">JSON</a></p>
</body></html>
"""
