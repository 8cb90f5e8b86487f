// The job page's playground: one prompt, sent to the job's base model and to its fine-tuned model at
// once; each answer is read as it streams (fetch + ReadableStream over Server-Sent Events) and shown side
// by side. The requests go to /ui/api/chat/completions, which is POST /v1/chat/completions under the
// dashboard's login: the session cookie (HttpOnly) authenticates them, so this script never sees a key.
// Answers are inserted as text nodes only (model output is never parsed as HTML).
"use strict";
(function () {
  const root = document.getElementById("playground");
  if (!root) return;
  const form = document.getElementById("pg-form");
  const promptBox = document.getElementById("pg-prompt");
  const send = document.getElementById("pg-send");
  const panes = [
    { model: root.dataset.base, out: document.getElementById("pg-base") },
    { model: root.dataset.tuned, out: document.getElementById("pg-tuned") },
  ];
  const MAX_TOKENS = 256;

  function headers() {
    const h = { "Content-Type": "application/json", Accept: "text/event-stream",
                "x-portkey-provider": root.dataset.provider };
    if (root.dataset.connection) h["x-portkey-virtual-key"] = root.dataset.connection;
    return h;
  }

  function showError(out, message) {
    const span = document.createElement("span");
    span.className = "pg-error";
    span.textContent = (out.textContent ? "\n" : "") + message;
    out.appendChild(span);
  }

  async function errorOf(resp) {
    let message = "HTTP " + resp.status;
    try {
      const body = await resp.json();
      if (body && body.error && body.error.message) message += ": " + body.error.message;
    } catch (e) { /* not JSON: the status says enough */ }
    return message;
  }

  // One SSE event's data lines joined, per the EventSource rules ("data:" with one optional space).
  function eventData(block) {
    return block.split(/\r?\n/).filter((l) => l.startsWith("data:"))
      .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
  }

  // Reads the stream into `text`; "done" or an error message.
  async function relay(resp, text) {
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return "done";
      buffer += value;
      let match;
      while ((match = /\r?\n\r?\n/.exec(buffer)) !== null) {
        const data = eventData(buffer.slice(0, match.index));
        buffer = buffer.slice(match.index + match[0].length);
        if (!data) continue;
        if (data === "[DONE]") return "done";
        let chunk;
        try { chunk = JSON.parse(data); } catch (e) { continue; }
        if (chunk.error) return chunk.error.message || "the stream failed";
        for (const choice of chunk.choices || []) {
          const content = choice.delta && choice.delta.content;
          if (content) text.appendData(content);
        }
      }
    }
  }

  async function ask(pane, prompt) {
    const out = pane.out;
    out.textContent = "";
    out.dataset.state = "streaming";
    out.classList.add("streaming");
    let outcome = "error";
    try {
      if (!pane.model) { showError(out, "This job does not name its base model."); return; }
      const text = document.createTextNode("");
      out.appendChild(text);
      const resp = await fetch("/ui/api/chat/completions", {
        method: "POST", headers: headers(), credentials: "same-origin",
        body: JSON.stringify({ model: pane.model, messages: [{ role: "user", content: prompt }], stream: true,
                               temperature: 0, max_tokens: MAX_TOKENS }),
      });
      if (!resp.ok || !resp.body) { showError(out, await errorOf(resp)); return; }
      const result = await relay(resp, text);
      if (result === "done") outcome = "done";
      else showError(out, result);
    } catch (e) {
      showError(out, "The request failed: " + e.message);
    } finally {
      out.classList.remove("streaming");
      out.dataset.state = outcome;
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const prompt = promptBox.value.trim();
    if (!prompt) return;
    send.disabled = true;
    try {
      await Promise.all(panes.map((pane) => ask(pane, prompt)));
    } finally {
      send.disabled = false;
    }
  });
})();
