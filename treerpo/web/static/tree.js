// The tree page's script. Reads the tree from <script id="tree-data" type="application/json">,
// draws it as collapsible rows (children are built only when their parent is expanded, so a
// 10,000-node tree opens as fast as a small one), and shows the selected node's root-to-node
// completion. Every model or dataset string goes into the DOM as a text node (never as HTML).
// The URL fragment is the state: #node=N selects node N, &tokens=1 shades tokens by logprob.
(function () {
  "use strict";
  const started = performance.now();
  const html = document.documentElement;
  const errorBox = document.getElementById("page-errors");
  window.addEventListener("error", function (event) {
    html.dataset.treerpoErrors = String((Number(html.dataset.treerpoErrors) || 0) + 1);
    if (errorBox) errorBox.textContent += "script error: " + event.message + "\n";
  });

  const data = JSON.parse(document.getElementById("tree-data").textContent);
  const F = {};
  data.fields.forEach(function (name, position) { F[name] = position; });
  const nodes = data.nodes;
  const children = nodes.map(function () { return []; });
  nodes.forEach(function (node, index) {
    if (node[F.parent] !== null) children[node[F.parent]].push(index);
  });
  const get = function (index, name) { return nodes[index][F[name]]; };

  // Characters that are invisible or reorder text around them: shown as U+XXXX badges.
  const HIDDEN = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]/g;
  function appendText(parent, text) {
    let last = 0;
    String(text).replace(HIDDEN, function (character, offset) {
      if (offset > last) parent.appendChild(document.createTextNode(text.slice(last, offset)));
      const badge = document.createElement("span");
      badge.className = "ctl";
      badge.textContent = "U+" + character.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0");
      parent.appendChild(badge);
      last = offset + 1;
      return character;
    });
    if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
    return parent;
  }
  function el(tag, className, text) {
    const element = document.createElement(tag);
    if (className) element.className = className;
    if (text !== undefined && text !== null) appendText(element, String(text));
    return element;
  }
  function valueColour(value) {
    if (value === null || value === undefined) return "#d1d5db";
    const t = Math.max(0, Math.min(1, value));
    return "hsl(" + Math.round(t * 120) + ",65%," + (48 - 8 * t) + "%)";
  }
  function signed(label, value, digits) {
    const span = el("span", "stat");
    if (value === null || value === undefined) {
      span.textContent = label + "=–";
      span.classList.add("zero");
    } else {
      const shown = Number(value.toFixed(digits));  // no "-0.00" for a tiny negative
      span.textContent = label + "=" + (shown > 0 ? "+" : "") + (shown === 0 ? 0 : shown).toFixed(digits);
      span.classList.add(shown > 0 ? "pos" : shown < 0 ? "neg" : "zero");
    }
    return span;
  }
  function snippetOf(text) {
    const flat = text.replace(/\n/g, "⏎");
    return flat.length > 90 ? flat.slice(0, 89) + "…" : flat;
  }

  // --- the tree -----------------------------------------------------------------------------
  const rows = new Map();  // node index -> its <li>, for nodes drawn so far
  const built = new Set();  // nodes whose children are drawn
  const open = new Set();  // nodes shown expanded
  let selected = null;

  function rowFor(index) {
    const item = document.createElement("li");
    item.className = "closed";
    item.dataset.node = String(index);
    const row = el("div", "row");
    row.dataset.node = String(index);
    const kids = children[index];
    row.appendChild(el("span", "toggle", kids.length ? "▸" : ""));
    const dot = el("span", "dot");
    dot.style.background = valueColour(get(index, "value"));
    row.appendChild(dot);
    row.appendChild(el("span", "nid", "#" + index));
    row.appendChild(el("span", "kind", get(index, "kind")));
    if (index !== 0) {
      if (!kids.length) row.appendChild(signed("r", get(index, "reward"), 0));
      row.appendChild(signed("v", get(index, "value"), 2));
      row.appendChild(signed("A", get(index, "advantage"), 2));
    }
    const entropy = get(index, "split_entropy");
    if (entropy !== null) row.appendChild(el("span", "stat", "H=" + entropy.toFixed(2)));
    row.appendChild(el("span", "stat muted", get(index, "num_tokens") + " tok"));
    if (get(index, "forced")) row.appendChild(el("span", "flag", "forced"));
    const finish = get(index, "finish_reason");
    if (finish) row.appendChild(el("span", "flag " + finish, finish));
    if (kids.length) row.appendChild(el("span", "muted", get(index, "leaves") + " leaves"));
    row.appendChild(el("span", "snippet", index === 0 ? "(prompt)" : snippetOf(get(index, "text"))));
    item.appendChild(row);
    rows.set(index, item);
    return item;
  }
  function expand(index) {
    const item = rows.get(index);
    if (!item || !children[index].length) return;
    if (!built.has(index)) {
      const list = el("ul", "tree");
      children[index].forEach(function (child) { list.appendChild(rowFor(child)); });
      item.appendChild(list);
      built.add(index);
    }
    item.lastChild.hidden = false;
    item.classList.remove("closed");
    item.firstChild.firstChild.textContent = "▾";
    open.add(index);
  }
  function collapse(index) {
    const item = rows.get(index);
    if (!item || !built.has(index)) return;
    item.lastChild.hidden = true;
    item.classList.add("closed");
    item.firstChild.firstChild.textContent = "▸";
    open.delete(index);
  }
  function expandTo(depth) {
    // Breadth-first from the root: every node shallower than `depth` open, the rest closed.
    const queue = [0];
    for (let head = 0; head < queue.length; head++) {
      const index = queue[head];
      if (get(index, "depth") < depth) {
        expand(index);
        children[index].forEach(function (child) { queue.push(child); });
      } else {
        collapse(index);
      }
    }
  }
  function showAncestors(index) {
    const path = [];
    for (let at = get(index, "parent"); at !== null; at = get(at, "parent")) path.push(at);
    path.reverse().forEach(expand);
  }

  const treeRoot = el("ul", "tree top");
  treeRoot.appendChild(rowFor(0));
  document.getElementById("tree").appendChild(treeRoot);
  expandTo(data.collapse_depth);

  treeRoot.addEventListener("click", function (event) {
    const row = event.target.closest(".row");
    if (!row) return;
    const index = Number(row.dataset.node);
    if (event.target.classList.contains("toggle")) {
      if (open.has(index)) collapse(index); else expand(index);
      return;
    }
    if (children[index].length && index !== selected) expand(index);
    setState(index, shading());
  });

  // --- the selected node --------------------------------------------------------------------
  const panel = document.getElementById("panel");
  const shadeBox = document.getElementById("shade");

  function shading() { return shadeBox.checked; }
  function pathTo(index) {
    const path = [];
    for (let at = index; at !== null; at = get(at, "parent")) path.push(at);
    return path.reverse();
  }
  function fact(list, name, value, className) {
    list.appendChild(el("dt", null, name));
    list.appendChild(el("dd", className || null, value));
  }
  function fixed(value, digits) { return value === null ? "–" : value.toFixed(digits); }
  function tokenSpans(container, index) {
    const pieces = data.pieces ? data.pieces[index] : null;
    const bytes = atob(data.logprobs[index]);
    for (let position = 0; position < bytes.length; position++) {
      const logprob = -bytes.charCodeAt(position) / data.logprob_scale;
      const text = pieces ? pieces[position] : "⟨" + position + "⟩";
      const span = el("span", "tok", text);
      // Shade grows with -logprob, darkest from -4 nats (p ≈ 0.02) down.
      const surprise = Math.min(1, -logprob / 4);
      span.style.background = "rgba(220,38,38," + (0.04 + 0.76 * surprise).toFixed(3) + ")";
      span.title = "logprob ≈ " + logprob.toFixed(2) + " · p ≈ " + Math.exp(logprob).toFixed(3);
      container.appendChild(span);
    }
  }
  function renderPanel(index) {
    panel.textContent = "";
    const isLeaf = !children[index].length && index !== 0;
    panel.appendChild(el("h2", null, "Node #" + index + " · " + get(index, "kind") +
      (isLeaf && get(index, "kind") !== "leaf" ? " (leaf)" : "") + " · depth " + get(index, "depth")));
    const facts = el("dl", "facts");
    if (isLeaf) {
      const reward = get(index, "reward");
      fact(facts, "reward", fixed(reward, 2), reward === null ? null : reward > 0 ? "ok" : "bad");
      fact(facts, "extracted answer (last \\boxed{})", get(index, "answer") === null ? "(no \\boxed{} answer)" : get(index, "answer"), "usertext mono");
      fact(facts, "reference", data.reference, "usertext mono");
    }
    fact(facts, "value", fixed(get(index, "value"), 3));
    fact(facts, "advantage", fixed(get(index, "advantage"), 3));
    fact(facts, "split entropy", fixed(get(index, "split_entropy"), 3));
    fact(facts, "tokens (segment / path)", get(index, "num_tokens") + " / " +
      pathTo(index).slice(1).reduce(function (sum, at) { return sum + get(at, "num_tokens"); }, 0));
    fact(facts, "first token", get(index, "forced") ? "forced alternative" : "sampled");
    fact(facts, "finish", get(index, "finish_reason") || "– (not a leaf)");
    if (!isLeaf) fact(facts, "leaves below", String(get(index, "leaves")));
    panel.appendChild(facts);
    panel.appendChild(el("h2", null, index === 0 ? "Prompt" :
      "Completion, root to this node (" + (pathTo(index).length - 1) + " segments)"));
    const text = el("div", shading() ? "completion shaded" : "completion");
    text.id = "completion";
    if (index === 0) {
      appendText(text, get(0, "text"));
    } else {
      pathTo(index).slice(1).forEach(function (at) {
        const segment = el("span", "seg" + (at === index ? " current" : ""));
        segment.dataset.node = String(at);
        segment.title = "node #" + at;
        if (shading()) tokenSpans(segment, at); else appendText(segment, get(at, "text"));
        text.appendChild(segment);
      });
    }
    panel.appendChild(text);
    if (shading() && !data.pieces) {
      panel.appendChild(el("p", "muted", "Token texts need the tokenizer (" + data.pieces_note +
        "): tokens are shown by position."));
    }
    if (index !== 0) {
      const prompt = el("details");
      prompt.appendChild(el("summary", "muted", "rendered prompt (root)"));
      prompt.appendChild(el("pre", "usertext", get(0, "text")));
      panel.appendChild(prompt);
    }
  }
  function select(index) {
    if (selected !== null && rows.has(selected)) rows.get(selected).firstChild.classList.remove("selected");
    selected = index;
    showAncestors(index);
    const row = rows.get(index).firstChild;
    row.classList.add("selected");
    // Scroll the row into the tree's own box; the page itself stays where it was, so the
    // header and the panel stay in view.
    const pageX = window.scrollX, pageY = window.scrollY;
    row.scrollIntoView({ block: "center" });
    window.scrollTo(pageX, pageY);
    renderPanel(index);
    html.dataset.selected = String(index);
  }

  // --- state in the URL fragment --------------------------------------------------------------
  function readState() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ""));
    const index = Number(params.get("node"));
    return {
      node: params.has("node") && Number.isInteger(index) && index >= 0 && index < nodes.length ? index : null,
      tokens: params.get("tokens") === "1",
    };
  }
  function setState(index, tokens) {
    // pushState: the page updates at once (hashchange would come later) and Back still works.
    const hash = "#node=" + index + (tokens ? "&tokens=1" : "");
    if (location.hash !== hash) history.pushState(null, "", hash);
    applyState();
  }
  function applyState() {
    const state = readState();
    shadeBox.checked = state.tokens;
    if (state.node !== null) select(state.node);
  }
  window.addEventListener("hashchange", applyState);
  window.addEventListener("popstate", applyState);
  shadeBox.addEventListener("change", function () {
    if (selected === null) return;
    setState(selected, shadeBox.checked);
  });
  document.getElementById("expand-all").addEventListener("click", function () {
    expandTo(Infinity);
  });
  document.getElementById("collapse").addEventListener("click", function () {
    expandTo(data.collapse_depth);
  });
  document.getElementById("first-correct").addEventListener("click", function () {
    const leaf = nodes.findIndex(function (node, index) {
      return index > 0 && !children[index].length && node[F.reward] > 0;
    });
    if (leaf >= 0) setState(leaf, shading());
  });
  applyState();

  html.dataset.renderMs = (performance.now() - started).toFixed(1);
  html.dataset.loadMs = performance.now().toFixed(1);
  html.dataset.treerpoReady = "1";
})();
