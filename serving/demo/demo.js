// The browser demo of keras-reptile's server: draw a few-shot task, let the server adapt, show
// its guess. Plain JavaScript, no build step, nothing fetched but this server's own paths:
// demo/models.json (the served models and their cards), demo/data/omniglot_test.json (random
// tasks) and POST /v1/models/<name>[/versions/<v>]:predict with signatures "adapt" and
// "predict_adapted" (adapt once per support set, answer each query change from its weights), or
// "adapt_and_predict" for models without them and for the sine view.
"use strict";

(() => {
  const PAD = 100; // drawing canvas, pixels
  const MIN_WAYS = 2;
  const DEFAULT_WAYS = 3;
  const MAX_SHOTS = 5;
  const MAX_QUERIES = 5;
  const DEBOUNCE_MS = 300;
  const SINE_RANGE = 5; // the plot shows x and y in [-5, 5]
  const SINE_GRID = 101; // query points of each curve
  const PLOT_MARGIN = 34;

  // ---------------------------------------------------------------------------------------------
  // Preprocessing: keras_reptile.data.preprocessing.strokes_to_image, operation for operation.
  // JavaScript numbers are IEEE float64, as Python floats and numpy's float64 are, and every
  // step below is the same sequence of +, -, *, / and comparisons, so both give the same bits.
  // `params` are the Python constants, from models.json: reference_size, ink_extent, pen_width.

  function strokesToImage(strokes, size, params) {
    let x0 = Infinity;
    let y0 = Infinity;
    let x1 = -Infinity;
    let y1 = -Infinity;
    if (!strokes.length) throw new Error("strokes must hold at least one point");
    for (const stroke of strokes) {
      if (!stroke.length) throw new Error("each stroke must hold at least one point");
      for (const [x, y] of stroke) {
        if (!Number.isFinite(x) || !Number.isFinite(y)) throw new Error("points must be finite");
        x0 = Math.min(x0, x);
        y0 = Math.min(y0, y);
        x1 = Math.max(x1, x);
        y1 = Math.max(y1, y);
      }
    }
    const perPixel = size / params.reference_size;
    const extent = params.ink_extent * perPixel;
    const pen = params.pen_width * perPixel;
    const longest = Math.max(x1 - x0, y1 - y0);
    const scale = longest > 0 ? (extent - pen) / longest : 0;
    const cx = (x0 + x1) / 2;
    const cy = (y0 + y1) / 2;
    const half = size / 2;
    const radius2 = (pen / 2) * (pen / 2);
    const ink = new Uint8Array(size * size);
    for (const stroke of strokes) {
      const xs = stroke.map((p) => (p[0] - cx) * scale + half);
      const ys = stroke.map((p) => (p[1] - cy) * scale + half);
      const segments = Math.max(stroke.length - 1, 1); // segment i joins point i to point i + 1
      for (let i = 0; i < segments; i++) {
        const j = Math.min(i + 1, stroke.length - 1);
        const ax = xs[i];
        const ay = ys[i];
        const dx = xs[j] - ax;
        const dy = ys[j] - ay;
        const length2 = dx * dx + dy * dy;
        for (let row = 0; row < size; row++) {
          const py = row + 0.5;
          for (let col = 0; col < size; col++) {
            const px = col + 0.5;
            let t = length2 > 0 ? ((px - ax) * dx + (py - ay) * dy) / length2 : 0;
            t = Math.min(Math.max(t, 0), 1);
            const ex = px - (ax + t * dx);
            const ey = py - (ay + t * dy);
            if (ex * ex + ey * ey <= radius2) ink[row * size + col] = 1;
          }
        }
      }
    }
    return ink.map((v) => 1 - v); // 1 for the background, as Omniglot's images
  }

  // serving/demo/make_data.py's encode_bits, read back.
  function bitsFromHex(text) {
    const bits = new Uint8Array(text.length * 4);
    for (let i = 0; i < text.length; i++) {
      const digit = parseInt(text[i], 16);
      for (let b = 0; b < 4; b++) bits[4 * i + b] = (digit >> (3 - b)) & 1;
    }
    return bits;
  }

  // ---------------------------------------------------------------------------------------------
  // State.

  const state = {
    models: [],
    model: null, // the summary of models.json for the chosen model
    prep: null, // strokes_to_image's constants
    size: 28,
    classes: [], // one array of cells per class
    queries: [], // cells
    data: null, // the shipped Omniglot drawings, once loaded
    timer: null,
    seq: 0, // the latest request sent; older answers are dropped
    pending: false, // a request is scheduled or running
    last: null, // the latest answer: {seq, request, outputs, latencyMs, steps, reused, error}
    adapted: null, // the latest adaptation: {key, weights, latencyMs}, reused while it fits
    sine: { points: [], truth: null, curves: {}, last: null, timer: null, seq: 0, pending: false },
  };

  const $ = (selector) => document.querySelector(selector);
  const make = (tag, className, text) => {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined) el.textContent = text;
    return el;
  };
  const color = (c) => `hsl(${(c * 137.5 + 210) % 360}, 62%, 45%)`;

  function showError(message) {
    const box = $("#error");
    box.textContent = message;
    box.hidden = false;
  }

  function clearError() {
    $("#error").hidden = true;
    $("#error").textContent = "";
  }

  // POST /v1/models/<name>:predict; resolves to {outputs, latencyMs}, rejects with a readable
  // message (the server's JSON "error", or why the server could not be reached).
  // `version` pins the request to one version (adapted weights fit only the version that made them).
  async function predict(inputs, signature = "adapt_and_predict", version = null) {
    const body = JSON.stringify({ signature_name: signature, inputs });
    const start = performance.now();
    const model = `/v1/models/${encodeURIComponent(state.model.name)}`;
    let response;
    try {
      response = await fetch(`${model}${version === null ? "" : `/versions/${version}`}:predict`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body,
      });
    } catch (e) {
      throw new Error(`Cannot reach the server: ${e.message}`);
    }
    const latencyMs = performance.now() - start;
    const text = await response.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch (e) {
      json = null;
    }
    if (!response.ok || !json || json.error !== undefined) {
      const message = json && json.error !== undefined ? json.error : text || response.statusText;
      throw new Error(`The server answered HTTP ${response.status}: ${message}`);
    }
    return { outputs: json.outputs, latencyMs };
  }

  // ---------------------------------------------------------------------------------------------
  // Cells: a drawing pad (strokes, or a shipped image) and the 28x28 input it becomes.

  function makeCell() {
    const el = make("div", "cell");
    const pad = make("canvas", "pad");
    pad.width = PAD;
    pad.height = PAD;
    const preview = make("canvas", "preview");
    preview.width = state.size;
    preview.height = state.size;
    const tools = make("div", "cell-bar");
    const undo = make("button", "undo", "\u21b6");
    const clear = make("button", "clear", "\u2715");
    undo.type = clear.type = "button";
    undo.title = "Undo the last stroke";
    clear.title = "Clear this drawing";
    undo.setAttribute("aria-label", undo.title);
    clear.setAttribute("aria-label", clear.title);
    preview.title = "What the model sees";
    tools.append(preview, make("span", "spacer"), undo, clear);
    el.append(pad, tools);
    const cell = {
      el, // the cell's element; `answer` (queries) holds its bars
      pad,
      preview,
      strokes: [], // each a list of [x, y] in the pad's pixels
      current: null, // the stroke being drawn
      image: null, // or a shipped drawing's bits (random task), with its `source`
      source: null,
      truth: null, // a random task's query: the class it was drawn from
      bits: null, // the model input, once computed
      answer: null,
    };

    const point = (e) => {
      const rect = pad.getBoundingClientRect(); // includes the border
      return [
        ((e.clientX - rect.left - pad.clientLeft) * pad.width) / pad.clientWidth,
        ((e.clientY - rect.top - pad.clientTop) * pad.height) / pad.clientHeight,
      ];
    };
    pad.addEventListener("pointerdown", (e) => {
      if (e.pointerType === "mouse" && e.button !== 0) return;
      e.preventDefault();
      pad.setPointerCapture(e.pointerId);
      if (cell.image) forget(cell);
      cell.truth = null;
      cell.current = [point(e)];
      cell.strokes.push(cell.current);
      draw(cell);
    });
    pad.addEventListener("pointermove", (e) => {
      if (!cell.current) return;
      const p = point(e);
      const last = cell.current[cell.current.length - 1];
      if (p[0] !== last[0] || p[1] !== last[1]) {
        cell.current.push(p);
        draw(cell);
      }
    });
    const end = () => {
      if (!cell.current) return;
      cell.current = null;
      changed(cell);
    };
    pad.addEventListener("pointerup", end);
    pad.addEventListener("pointercancel", end);
    undo.addEventListener("click", () => {
      if (cell.image) forget(cell);
      else cell.strokes.pop();
      cell.truth = null;
      changed(cell);
    });
    clear.addEventListener("click", () => {
      forget(cell);
      cell.strokes = [];
      cell.truth = null;
      changed(cell);
    });
    draw(cell);
    return cell;
  }

  function forget(cell) {
    cell.image = null;
    cell.source = null;
  }

  const hasDrawing = (cell) => Boolean(cell.image || cell.strokes.length);

  // The cell's model input: 28x28 bits, 1 for the background; null when empty.
  function cellBits(cell) {
    if (cell.bits === null && hasDrawing(cell)) {
      cell.bits = cell.image || strokesToImage(cell.strokes, state.size, state.prep);
    }
    return cell.bits;
  }

  function paintBits(canvas, bits) {
    const size = state.size;
    const g = canvas.getContext("2d");
    const image = g.createImageData(size, size);
    for (let k = 0; k < size * size; k++) {
      const v = bits ? bits[k] * 255 : 255;
      image.data.set([v, v, v, 255], 4 * k);
    }
    if (canvas.width === size) {
      g.putImageData(image, 0, 0);
      return;
    }
    const small = make("canvas");
    small.width = small.height = size;
    small.getContext("2d").putImageData(image, 0, 0);
    g.imageSmoothingEnabled = false;
    g.drawImage(small, 0, 0, canvas.width, canvas.height);
  }

  function draw(cell) {
    const g = cell.pad.getContext("2d");
    g.clearRect(0, 0, PAD, PAD);
    if (cell.image) {
      paintBits(cell.pad, cell.image);
    } else {
      g.strokeStyle = g.fillStyle = "#111";
      g.lineWidth = 5;
      g.lineCap = g.lineJoin = "round";
      for (const stroke of cell.strokes) {
        g.beginPath();
        g.moveTo(stroke[0][0], stroke[0][1]);
        if (stroke.length === 1) g.lineTo(stroke[0][0] + 0.01, stroke[0][1]);
        for (const [x, y] of stroke.slice(1)) g.lineTo(x, y);
        g.stroke();
      }
    }
    // A shipped image is the model's input itself.
    cell.preview.style.visibility = cell.image ? "hidden" : "visible";
    if (!cell.current) paintBits(cell.preview, cellBits(cell));
  }

  function changed(cell) {
    cell.bits = null;
    draw(cell);
    schedule();
  }

  // ---------------------------------------------------------------------------------------------
  // The classification view.

  function buildClasses(ways) {
    while (state.classes.length < ways) state.classes.push([makeCell()]);
    state.classes.length = ways;
    while (state.queries.length < 1) state.queries.push(makeCell());
    layout();
  }

  function layout() {
    const rows = $("#classes");
    rows.replaceChildren();
    state.classes.forEach((cells, c) => {
      const row = make("div", "row class-row");
      row.dataset.class = c;
      const head = make("div", "row-head");
      const title = make("span", "row-title");
      const swatch = make("span", "swatch");
      swatch.style.background = color(c);
      title.append(swatch, `Class ${c + 1}`);
      const tools = make("span", "row-tools");
      const minus = make("button", "shots-minus", "\u2212");
      const plus = make("button", "shots-plus", "+");
      minus.type = plus.type = "button";
      minus.title = "One drawing fewer";
      plus.title = "One drawing more";
      minus.disabled = cells.length <= 1;
      plus.disabled = cells.length >= MAX_SHOTS;
      minus.addEventListener("click", () => {
        cells.pop();
        layout();
        schedule();
      });
      plus.addEventListener("click", () => {
        cells.push(makeCell());
        layout();
        schedule();
      });
      tools.append(minus, plus);
      head.append(title, tools);
      const list = make("div", "cells");
      for (const cell of cells) list.append(cell.el);
      row.append(head, list);
      rows.append(row);
    });
    const queries = $("#queries");
    queries.replaceChildren();
    for (const cell of state.queries) {
      if (!cell.answer) cell.answer = make("div", "answer");
      const box = make("div", "query");
      box.append(cell.el, cell.answer);
      queries.append(box);
    }
    const ways = state.classes.length;
    $("#ways").textContent = ways;
    $("#ways-minus").disabled = ways <= MIN_WAYS;
    $("#ways-plus").disabled = !state.model || ways >= state.model.ways;
    $("#queries-minus").disabled = state.queries.length <= 1;
    $("#queries-plus").disabled = state.queries.length >= MAX_QUERIES;
  }

  function steps() {
    const text = $("#steps").value.trim();
    return /^-?\d+$/.test(text) ? Number(text) : NaN;
  }

  function schedule() {
    clearTimeout(state.timer);
    state.pending = true;
    for (const cell of state.queries) if (cell.answer) cell.answer.classList.add("stale");
    state.timer = setTimeout(run, DEBOUNCE_MS);
  }

  // The latest request is done: idle, unless a change has scheduled another one since.
  function settled(view) {
    if (view.timer === null) view.pending = false;
  }

  function clearAnswers() {
    for (const cell of state.queries) if (cell.answer) cell.answer.replaceChildren();
  }

  // Sends the task if it is complete, and shows the answer (or the error).
  async function run() {
    state.timer = null;
    const seq = ++state.seq;
    const ready = state.classes.every((cells) => cells.some(hasDrawing));
    const asked = state.queries.filter(hasDrawing);
    if (!ready || !asked.length) {
      clearAnswers();
      clearError();
      $("#status").textContent =
        "Draw at least one example of every class and a query: the answer appears under the query.";
      settled(state);
      return;
    }
    const n = steps();
    if (!Number.isInteger(n)) {
      showError("Inner steps must be a whole number.");
      settled(state);
      return;
    }
    const nested = (bits) => {
      const rows = [];
      for (let r = 0; r < state.size; r++) {
        rows.push(Array.from(bits.slice(r * state.size, (r + 1) * state.size), (v) => [v]));
      }
      return rows;
    };
    const support = [];
    const labels = [];
    state.classes.forEach((cells, c) => {
      for (const cell of cells.filter(hasDrawing)) {
        support.push(nested(cellBits(cell)));
        labels.push(c);
      }
    });
    const request = {
      support_images: support,
      support_labels: labels,
      query_images: asked.map((cell) => nested(cellBits(cell))),
      inner_steps: n,
    };
    // The support set and the steps decide the adaptation: while they stay the same, a changed
    // query is answered from the adapted weights (predict_adapted) without adapting again.
    const split = (state.model.signatures || []).includes("predict_adapted");
    const key = JSON.stringify([state.model.name, state.model.version, support, labels, n]);
    const reused = split && state.adapted !== null && state.adapted.key === key;
    $("#status").textContent = reused ? "Answering\u2026" : "Adapting\u2026";
    try {
      let outputs;
      let latencyMs;
      if (!split) {
        ({ outputs, latencyMs } = await predict(request));
      } else {
        let adaptMs = 0;
        if (!reused) {
          const adapted = await predict(
            { support_images: support, support_labels: labels, inner_steps: n },
            "adapt",
            state.model.version,
          );
          if (seq !== state.seq) return;
          adaptMs = adapted.latencyMs;
          state.adapted = { key, weights: adapted.outputs, latencyMs: adaptMs };
        }
        const answer = await predict(
          {
            adapted_weights: state.adapted.weights,
            support_images: support,
            query_images: request.query_images,
          },
          "predict_adapted",
          state.model.version,
        );
        outputs = answer.outputs;
        latencyMs = adaptMs + answer.latencyMs;
      }
      if (seq !== state.seq) return;
      clearError();
      state.last = { seq, request, outputs, latencyMs, steps: n, reused, error: null };
      showAnswers(asked, outputs);
      const how = reused
        ? `reused the adaptation: ${n} inner steps not run again`
        : `${n} inner steps`;
      $("#status").textContent =
        `${Math.round(latencyMs)} ms \u00b7 ${how} \u00b7 ${state.model.name} ` +
        `v${state.model.version} \u00b7 ${labels.length} support drawings in ` +
        `${state.classes.length} classes, ${asked.length} ${asked.length === 1 ? "query" : "queries"}`;
    } catch (e) {
      if (seq !== state.seq) return;
      state.adapted = null;
      state.last = { seq, request, outputs: null, latencyMs: null, steps: n, reused, error: e.message };
      clearAnswers();
      showError(e.message);
      $("#status").textContent = "No answer: see the message above.";
    } finally {
      if (seq === state.seq) settled(state);
    }
  }

  function showAnswers(asked, outputs) {
    for (const cell of state.queries) {
      cell.answer.replaceChildren();
      cell.answer.classList.remove("stale");
    }
    const ways = state.classes.length;
    asked.forEach((cell, q) => {
      const probabilities = outputs.probabilities[q];
      const used = probabilities.slice(0, ways);
      const top = used.indexOf(Math.max(...used));
      used.forEach((p, c) => {
        const row = make("div", `bar-row${c === top ? " top" : ""}`);
        row.dataset.class = c;
        row.dataset.probability = String(p);
        const fill = make("span", "fill");
        fill.style.width = `${(100 * p).toFixed(1)}%`;
        fill.style.background = color(c);
        const bar = make("span", "bar");
        bar.append(fill);
        row.append(make("span", "bar-label", `Class ${c + 1}`), bar);
        row.append(make("span", "bar-value", `${(100 * p).toFixed(1)}%`));
        cell.answer.append(row);
      });
      const rest = probabilities.slice(ways).reduce((a, b) => a + b, 0);
      if (probabilities.length > ways) {
        const note = `other ${probabilities.length - ways} outputs: ${(100 * rest).toFixed(1)}%`;
        cell.answer.append(make("div", "truth", note));
      }
      if (cell.truth !== null) {
        const right = cell.truth === top;
        const note = right ? `\u2713 right: class ${top + 1}` : `\u2717 it was class ${cell.truth + 1}`;
        cell.answer.append(make("div", `truth ${right ? "right" : "wrong"}`, note));
      }
    });
  }

  async function loadData() {
    if (!state.data) {
      const response = await fetch("data/omniglot_test.json");
      if (!response.ok) throw new Error(`Cannot load the drawings: HTTP ${response.status}`);
      const data = await response.json();
      data.characters.forEach((ch) => (ch.bits = ch.drawings.map(bitsFromHex)));
      state.data = data;
    }
    return state.data;
  }

  function shuffled(n) {
    const order = Array.from({ length: n }, (_, i) => i);
    for (let i = n - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1));
      [order[i], order[j]] = [order[j], order[i]];
    }
    return order;
  }

  // Fills the cells with shipped test characters: one character per class (its drawings as
  // support), and a held-out drawing of a class in each query cell.
  async function randomTask() {
    let data;
    try {
      data = await loadData();
    } catch (e) {
      showError(e.message);
      return;
    }
    const ways = state.classes.length;
    const characters = shuffled(data.characters.length).slice(0, ways);
    const held = [];
    const put = (cell, c, drawing) => {
      const character = characters[c];
      cell.strokes = [];
      cell.image = data.characters[character].bits[drawing];
      cell.source = { character, drawing, name: data.characters[character].name };
      cell.bits = null;
    };
    state.classes.forEach((cells, c) => {
      const order = shuffled(data.characters[characters[c]].bits.length);
      cells.forEach((cell, k) => {
        put(cell, c, order[k]);
        cell.truth = null;
      });
      held.push(order.slice(cells.length));
    });
    const classOrder = shuffled(ways);
    state.queries.forEach((cell, q) => {
      cell.truth = null;
      for (let k = 0; k < ways; k++) {
        const c = classOrder[(q + k) % ways];
        if (held[c].length) {
          put(cell, c, held[c].shift());
          cell.truth = c;
          return;
        }
      }
      forget(cell); // more queries than held-out drawings: left empty
      cell.strokes = [];
      cell.bits = null;
    });
    for (const cell of [...state.classes.flat(), ...state.queries]) draw(cell);
    schedule();
  }

  function clearAll() {
    for (const cell of [...state.classes.flat(), ...state.queries]) {
      forget(cell);
      cell.strokes = [];
      cell.truth = null;
      cell.bits = null;
      draw(cell);
    }
    schedule();
  }

  // ---------------------------------------------------------------------------------------------
  // The regression view: the sine model's Figure 1, live.

  function sineSteps() {
    const last = state.model.default_protocol.eval_iters;
    return [...new Set([0, 1, last])];
  }

  const sineColors = ["#8a8f99", "#e07b00", "#2357c6"];

  function toPlot(x, y) {
    const span = 480 - 2 * PLOT_MARGIN;
    return [
      PLOT_MARGIN + ((x + SINE_RANGE) / (2 * SINE_RANGE)) * span,
      PLOT_MARGIN + ((SINE_RANGE - y) / (2 * SINE_RANGE)) * span,
    ];
  }

  function fromPlot(px, py) {
    const span = 480 - 2 * PLOT_MARGIN;
    const clamp = (v) => Math.min(Math.max(v, -SINE_RANGE), SINE_RANGE);
    return [
      clamp(((px - PLOT_MARGIN) / span) * 2 * SINE_RANGE - SINE_RANGE),
      clamp(SINE_RANGE - ((py - PLOT_MARGIN) / span) * 2 * SINE_RANGE),
    ];
  }

  const grid = () =>
    Array.from({ length: SINE_GRID }, (_, i) => -SINE_RANGE + (2 * SINE_RANGE * i) / (SINE_GRID - 1));

  function drawPlot() {
    const canvas = $("#plot");
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, canvas.width, canvas.height);
    g.font = "12px system-ui, sans-serif";
    g.textAlign = "center";
    g.textBaseline = "top";
    for (let v = -SINE_RANGE; v <= SINE_RANGE; v++) {
      const [x] = toPlot(v, 0);
      const [, y] = toPlot(0, v);
      g.strokeStyle = v === 0 ? "#9aa3b5" : "#eceef3";
      g.lineWidth = 1;
      g.beginPath();
      g.moveTo(x, PLOT_MARGIN);
      g.lineTo(x, canvas.height - PLOT_MARGIN);
      g.moveTo(PLOT_MARGIN, y);
      g.lineTo(canvas.width - PLOT_MARGIN, y);
      g.stroke();
      g.fillStyle = "#5d6678";
      if (v % 1 === 0) {
        g.fillText(String(v), x, canvas.height - PLOT_MARGIN + 6);
        g.textAlign = "right";
        g.fillText(String(v), PLOT_MARGIN - 6, y - 6);
        g.textAlign = "center";
      }
    }
    const curve = (ys, style, width, dash) => {
      g.strokeStyle = style;
      g.lineWidth = width;
      g.setLineDash(dash);
      g.beginPath();
      grid().forEach((x, i) => {
        const [px, py] = toPlot(x, Math.min(Math.max(ys[i], -2 * SINE_RANGE), 2 * SINE_RANGE));
        if (i === 0) g.moveTo(px, py);
        else g.lineTo(px, py);
      });
      g.stroke();
      g.setLineDash([]);
    };
    g.save();
    g.beginPath();
    g.rect(PLOT_MARGIN, PLOT_MARGIN, canvas.width - 2 * PLOT_MARGIN, canvas.height - 2 * PLOT_MARGIN);
    g.clip();
    const truth = state.sine.truth;
    if (truth) curve(grid().map((x) => truth.amplitude * Math.sin(x + truth.phase)), "#3a9d5d", 2, [6, 5]);
    if (state.model && state.model.regression) {
      sineSteps().forEach((n, k) => {
        const ys = state.sine.curves[n];
        if (ys) curve(ys, sineColors[k % sineColors.length], 2.5, n === 0 ? [4, 4] : []);
      });
    }
    g.restore();
    g.fillStyle = "#111";
    for (const [x, y] of state.sine.points) {
      const [px, py] = toPlot(x, y);
      g.beginPath();
      g.arc(px, py, 4.5, 0, 2 * Math.PI);
      g.fill();
    }
  }

  function sineLegend() {
    const items = sineSteps().map((n, k) => [
      sineColors[k % sineColors.length],
      n === 0 ? "before adapting (0 steps)" : `after ${n} inner step${n === 1 ? "" : "s"}`,
    ]);
    if (state.sine.truth) items.push(["#3a9d5d", "the sine the points came from"]);
    items.push(["#111", "your points (support set)"]);
    $("#legend").replaceChildren(
      ...items.map(([c, text]) => {
        const li = make("li");
        const key = make("span", "key");
        key.style.borderColor = c;
        li.append(key, text);
        return li;
      }),
    );
  }

  function scheduleSine() {
    clearTimeout(state.sine.timer);
    state.sine.pending = true;
    state.sine.timer = setTimeout(runSine, DEBOUNCE_MS);
    drawPlot();
    sineLegend();
  }

  async function runSine() {
    const sine = state.sine;
    sine.timer = null;
    const seq = ++sine.seq;
    if (!sine.points.length) {
      sine.curves = {};
      drawPlot();
      clearError();
      $("#sine-status").textContent = "Click on the plot to add points.";
      settled(sine);
      return;
    }
    const xs = grid();
    const base = {
      support_inputs: sine.points.map(([x]) => [x]),
      support_targets: sine.points.map(([, y]) => [y]),
      query_inputs: xs.map((x) => [x]),
    };
    $("#sine-status").textContent = "Adapting\u2026";
    try {
      const answers = await Promise.all(
        sineSteps().map((n) => predict({ ...base, inner_steps: n })),
      );
      if (seq !== sine.seq) return;
      clearError();
      sine.curves = {};
      sineSteps().forEach((n, k) => (sine.curves[n] = answers[k].outputs.map((v) => v[0])));
      sine.last = { seq, request: base, steps: sineSteps(), latencyMs: answers.map((a) => a.latencyMs) };
      drawPlot();
      const times = sineSteps().map(
        (n, k) => `${n} step${n === 1 ? "" : "s"} ${Math.round(answers[k].latencyMs)} ms`,
      );
      $("#sine-status").textContent =
        `${sine.points.length} points \u00b7 latency: ${times.join(", ")} \u00b7 ` +
        `${state.model.name} v${state.model.version}`;
    } catch (e) {
      if (seq !== sine.seq) return;
      sine.curves = {};
      drawPlot();
      showError(e.message);
      $("#sine-status").textContent = "No answer: see the message above.";
    } finally {
      if (seq === sine.seq) settled(sine);
    }
  }

  function randomSine() {
    const amplitude = 0.1 + Math.random() * 4.9;
    const phase = Math.random() * Math.PI;
    state.sine.truth = { amplitude, phase };
    state.sine.points = Array.from({ length: 10 }, () => {
      const x = -SINE_RANGE + Math.random() * 2 * SINE_RANGE;
      return [x, amplitude * Math.sin(x + phase)];
    });
    scheduleSine();
  }

  // ---------------------------------------------------------------------------------------------
  // Models.

  function viewOf(model) {
    if (model.error !== undefined) return null;
    const shape = model.input_shape.join(",");
    if (model.regression) return shape === "1" ? "sine" : null;
    return shape === `${state.size},${state.size},1` ? "classify" : null;
  }

  function describe(model) {
    const p = model.default_protocol;
    const fmt = (m) => `${(100 * m.mean).toFixed(2)} \u00b1 ${(100 * m.ci95).toFixed(2)} %`;
    const head = `${model.name} v${model.version}`;
    if (model.regression) {
      const test = model.results.find((m) => m.split === "test" && m.metric === "mse");
      const random = model.results.find((m) => m.split === "test_from_random_init");
      let text = `${head} \u00b7 regression \u00b7 `;
      text += test
        ? `card's test MSE after ${test.protocol.eval_iters} steps on ${test.protocol.shots} points: ` +
          `${test.mean.toFixed(3)} \u00b1 ${test.ci95.toFixed(3)}`
        : "no test MSE on its card";
      if (random) text += ` (from the random initialization: ${random.mean.toFixed(2)})`;
      return text;
    }
    const accuracies = model.results
      .filter((m) => m.split === "test" && m.metric === "accuracy" && !m.protocol.transductive)
      .sort((a, b) => a.protocol.shots - b.protocol.shots);
    const measured = accuracies.length
      ? `card's test accuracy (${model.ways}-way, non-transductive): ` +
        accuracies.map((m) => `${m.protocol.shots}-shot ${fmt(m)}`).join(", ")
      : "no test accuracy on its card";
    return `${head} \u00b7 ${model.ways} ways \u00b7 ${measured} \u00b7 ${p.eval_iters} inner steps by default`;
  }

  function selectModel(name) {
    const model = state.models.find((m) => m.name === name);
    // Drop what the previous model had scheduled or in flight.
    for (const view of [state, state.sine]) {
      clearTimeout(view.timer);
      view.timer = null;
      view.seq++;
      view.pending = false;
    }
    state.model = model;
    $("#model").value = name;
    $("#model-info").textContent = describe(model);
    clearError();
    const view = viewOf(model);
    $("#classify-view").hidden = view !== "classify";
    $("#sine-view").hidden = view !== "sine";
    if (view === "classify") {
      $("#steps").value = model.default_protocol.eval_iters;
      const ways = Math.min(Math.max(state.classes.length || DEFAULT_WAYS, MIN_WAYS), model.ways);
      buildClasses(ways);
      schedule();
    } else {
      state.sine.curves = {};
      scheduleSine();
    }
  }

  async function init() {
    let listing;
    try {
      const response = await fetch("models.json");
      listing = await response.json();
      if (!response.ok) throw new Error(listing.error || `HTTP ${response.status}`);
    } catch (e) {
      showError(`Cannot list the served models: ${e.message}`);
      return;
    }
    state.prep = listing.preprocessing;
    state.size = listing.preprocessing.reference_size;
    state.models = listing.models;
    const select = $("#model");
    for (const model of state.models) {
      const option = make("option", "", model.name);
      option.value = model.name;
      const view = viewOf(model);
      if (model.error !== undefined) option.textContent += ` (unavailable: ${model.error})`;
      else if (!view) option.textContent += ` (no view for input shape [${model.input_shape}])`;
      option.disabled = !view;
      select.append(option);
    }
    const usable = state.models.filter(viewOf);
    if (!usable.length) {
      showError(
        "No served model fits the demo: it needs a classifier of 28x28x1 images or a regression " +
          "model of one input.",
      );
      return;
    }
    const wanted = new URLSearchParams(location.search).get("model");
    const first =
      usable.find((m) => m.name === wanted) || usable.find((m) => viewOf(m) === "classify") || usable[0];
    selectModel(first.name);
  }

  // ---------------------------------------------------------------------------------------------
  // Wiring.

  $("#model").addEventListener("change", (e) => selectModel(e.target.value));
  $("#ways-minus").addEventListener("click", () => {
    buildClasses(state.classes.length - 1);
    schedule();
  });
  $("#ways-plus").addEventListener("click", () => {
    buildClasses(state.classes.length + 1);
    schedule();
  });
  $("#queries-minus").addEventListener("click", () => {
    state.queries.pop();
    layout();
    schedule();
  });
  $("#queries-plus").addEventListener("click", () => {
    state.queries.push(makeCell());
    layout();
    schedule();
  });
  $("#steps").addEventListener("input", schedule);
  $("#random-task").addEventListener("click", randomTask);
  $("#clear-all").addEventListener("click", clearAll);
  $("#plot").addEventListener("click", (e) => {
    const canvas = $("#plot");
    const rect = canvas.getBoundingClientRect(); // includes the border
    const px = ((e.clientX - rect.left - canvas.clientLeft) * canvas.width) / canvas.clientWidth;
    const py = ((e.clientY - rect.top - canvas.clientTop) * canvas.height) / canvas.clientHeight;
    state.sine.points.push(fromPlot(px, py));
    scheduleSine();
  });
  $("#sine-undo").addEventListener("click", () => {
    state.sine.points.pop();
    scheduleSine();
  });
  $("#sine-clear").addEventListener("click", () => {
    state.sine.points = [];
    state.sine.truth = null;
    scheduleSine();
  });
  $("#sine-random").addEventListener("click", randomSine);

  window.demo = { strokesToImage, bitsFromHex, cellBits, state, ready: init() };
})();
