// The Weir console: one page, routed by the URL's fragment, that reads and changes the node
// through the public /v1 API only. Record contents are untrusted: every value reaches the page
// as text (textContent), never as markup.

const TOKEN_KEY = "weir.token";
const SQL_HISTORY_KEY = "weir.sql.history";
const SQL_HISTORY_MAX = 50;
const REFRESH_MS = 5000;
const RECORDS_PAGE = 50;
const SQL_PAGE_ROWS = 100;
const CHART_HEIGHT = 220;

// ---- the API --------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Calls the API; answers the parsed JSON (or text), throws the API's own error message. */
async function api(method, path, body, contentType = "application/json") {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  let payload;
  if (body !== undefined) {
    headers["Content-Type"] = contentType;
    payload = contentType === "application/json" ? JSON.stringify(body) : body;
  }
  const response = await fetch(`/v1${path}`, { method, headers, body: payload });
  const text = await response.text();
  let parsed = text;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON: keep the text.
  }
  if (!response.ok) {
    const message = parsed && parsed.error ? parsed.error : text || response.statusText;
    throw new ApiError(response.status, message);
  }
  return parsed;
}

const enc = encodeURIComponent;

// ---- building the page ------------------------------------------------------------------------

/** An element with attributes (on* as listeners) and children (strings become text). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function errorBox(error) {
  return h("div", { class: "error", role: "alert" }, error.message || String(error));
}

function table(headers, rows, numeric = []) {
  return h(
    "div",
    { class: "scroll" },
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, headers.map((t, i) => h("th", { class: numeric.includes(i) ? "num" : null }, t)))),
      h(
        "tbody",
        {},
        rows.map((cells) => h("tr", {}, cells.map((c, i) => h("td", { class: numeric.includes(i) ? "num" : null }, c)))),
      ),
    ),
  );
}

function card(label, value) {
  return h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: "value" }, value));
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function count(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
}

function duration(seconds) {
  const d = Math.floor(seconds / 86400);
  const hr = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  return d ? `${d}d ${hr}h` : hr ? `${hr}h ${m}m` : `${m}m ${seconds % 60}s`;
}

/** A time in local time and in UTC. */
function when(ms) {
  if (ms === null || ms === undefined || ms < 0) return "–";
  const t = new Date(ms);
  return `${t.toLocaleString()} (${t.toISOString()})`;
}

function retention(ms) {
  if (ms === undefined) return "default";
  const n = Number(ms);
  if (n < 0) return "forever";
  return n % 86400000 === 0 ? `${n / 86400000} d` : n % 3600000 === 0 ? `${n / 3600000} h` : `${n} ms`;
}

/** A line chart of series over time (x in seconds), redrawn in place by `update`, which may
 * name other series than `labels` (the chart is then made again). */
function lineChart(title, labels, unit) {
  const box = h("div", { class: "chart", "aria-label": title });
  const colours = ["#1f5fbf", "#c05621", "#1b7a3a", "#7b3fa0", "#a4161a", "#4a5568"];
  let plot = null;
  let drawn = "";
  // As wide as the space the chart has, drawn again when the window changes that.
  const width = () => Math.max(240, Math.min(box.clientWidth || main().clientWidth - 32, 1160));
  new ResizeObserver(() => {
    if (plot && Math.abs(plot.width - width()) > 1) plot.setSize({ width: width(), height: CHART_HEIGHT });
  }).observe(box);
  return {
    box,
    update(x, ys, names = labels) {
      const data = [x, ...ys];
      if (plot && names.join("\n") !== drawn) {
        plot.destroy();
        plot = null;
      }
      if (plot) {
        plot.setData(data);
        return;
      }
      drawn = names.join("\n");
      const opts = {
        title,
        width: width(),
        height: CHART_HEIGHT,
        series: [{}, ...names.map((label, i) => ({ label, stroke: colours[i % colours.length], width: 1.5 }))],
        axes: [{}, { values: (_, ticks) => ticks.map(unit), size: 90 }],
      };
      plot = new window.uPlot(opts, data, box);
    },
  };
}

// ---- pages ----------------------------------------------------------------------------------

const main = () => document.getElementById("main");
let stopRefresh = () => {};

/** Shows `render`'s page, redone every REFRESH_MS while it stays shown when `live`. */
function every(ms, tick) {
  let timer = null;
  let stopped = false;
  const run = async () => {
    await tick();
    if (!stopped) timer = setTimeout(run, ms);
  };
  run();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

async function overviewPage(root) {
  root.append(h("h1", {}, "Overview"));
  const cards = h("div", { class: "cards", id: "node-cards" });
  const problem = h("div");
  const byteChart = lineChart("Bytes per second", ["produced", "consumed"], bytes);
  const recordChart = lineChart("Records per second", ["produced", "consumed"], (n) => count(Math.round(n)));
  const waiting = h("p", { class: "note" }, "The node takes a sample every 5 seconds; the charts start with the second.");
  root.append(problem, cards, h("h2", {}, "Last 15 minutes"), waiting, byteChart.box, recordChart.box);
  return every(REFRESH_MS, async () => {
    try {
      const [node, history] = await Promise.all([api("GET", "/node"), api("GET", "/node/history")]);
      problem.replaceChildren();
      cards.replaceChildren(
        card("Version", node.version),
        card("Uptime", duration(node.uptime_seconds)),
        card("Topics", count(node.topics)),
        card("Partitions", count(node.partitions)),
        card("Offline partitions", count(node.offline_partitions)),
        card("On disk", bytes(node.size_bytes)),
        card("Disk free", bytes(node.disk_free_bytes)),
        card("Kafka connections", count(node.connections.kafka)),
        card("HTTP connections", count(node.connections.http)),
        card("Postgres connections", count(node.connections.postgres)),
        card("Groups", count(node.groups)),
        card("Pipelines", count(node.pipelines)),
      );
      const s = history.samples;
      waiting.hidden = s.length > 0;
      const x = s.map((p) => p.time_ms / 1000);
      byteChart.update(x, [s.map((p) => p.produced_bytes_per_s), s.map((p) => p.consumed_bytes_per_s)]);
      recordChart.update(x, [s.map((p) => p.produced_records_per_s), s.map((p) => p.consumed_records_per_s)]);
    } catch (e) {
      problem.replaceChildren(errorBox(e));
    }
  });
}

async function topicsPage(root) {
  root.append(h("h1", {}, "Topics"));
  const problem = h("div");
  const list = h("div");
  const name = h("input", { name: "name", required: true, placeholder: "logs", "aria-label": "Topic name" });
  const partitions = h("input", { name: "partitions", type: "number", min: 1, value: 1, "aria-label": "Partitions" });
  const configs = h("input", { name: "configs", placeholder: "retention.ms=86400000", "aria-label": "Configs" });
  const form = h(
    "form",
    {
      id: "create-topic",
      onsubmit: async (event) => {
        event.preventDefault();
        try {
          await api("POST", "/topics", {
            name: name.value.trim(),
            partitions: Number(partitions.value),
            configs: parseConfigs(configs.value),
          });
          name.value = "";
          configs.value = "";
          problem.replaceChildren();
          await load();
        } catch (e) {
          problem.replaceChildren(errorBox(e));
        }
      },
    },
    h("label", {}, "Name", name),
    h("label", {}, "Partitions", partitions),
    h("label", {}, "Configs (key=value, comma separated)", configs),
    h("button", { class: "primary", type: "submit" }, "Create topic"),
  );
  root.append(problem, list, h("h2", {}, "New topic"), form);
  const load = async () => {
    try {
      const [topics, history] = await Promise.all([api("GET", "/topics"), api("GET", "/node/history")]);
      const rates = history.topics;
      const rate = (name, field) => (rates[name] ? `${bytes(rates[name][field])}/s` : "–");
      list.replaceChildren(
        topics.length === 0
          ? h("p", { class: "note" }, "No topics yet.")
          : table(
              ["Topic", "Partitions", "Records", "Size", "In", "Out", "Retention", ""],
              topics.map((t) => [
                h("a", { href: `#/topics/${enc(t.name)}` }, t.name),
                count(t.partitions),
                count(t.records),
                bytes(t.size_bytes),
                rate(t.name, "produced_bytes_per_s"),
                rate(t.name, "consumed_bytes_per_s"),
                retention(t.configs["retention.ms"]),
                h("button", { class: "danger", type: "button", onclick: () => deleteTopic(t.name, problem, load) }, "Delete"),
              ]),
              [1, 2, 3, 4, 5],
            ),
      );
    } catch (e) {
      problem.replaceChildren(errorBox(e));
    }
  };
  await load();
  return () => {};
}

function parseConfigs(text) {
  const configs = {};
  for (const pair of text.split(",").map((p) => p.trim()).filter(Boolean)) {
    const at = pair.indexOf("=");
    if (at < 1) throw new Error(`"${pair}" is not key=value`);
    configs[pair.slice(0, at).trim()] = pair.slice(at + 1).trim();
  }
  return configs;
}

async function deleteTopic(name, problem, then) {
  const typed = window.prompt(`Delete topic "${name}" and every record in it? Type the topic's name to confirm.`);
  if (typed !== name) return;
  try {
    await api("DELETE", `/topics/${enc(name)}`);
    await then();
  } catch (e) {
    problem.replaceChildren(errorBox(e));
  }
}

async function topicPage(root, name) {
  root.append(h("h1", {}, "Topic ", h("span", { id: "topic-name" }, name)));
  const problem = h("div");
  root.append(problem);
  let topic;
  try {
    topic = await api("GET", `/topics/${enc(name)}`);
  } catch (e) {
    problem.append(errorBox(e));
    return () => {};
  }
  root.append(
    h("h2", {}, "Partitions"),
    table(
      ["Partition", "Start offset", "End offset", "Segments", "Size"],
      topic.partitions.map((p) => [p.partition, count(p.log_start_offset), count(p.high_watermark), p.segments, bytes(p.size_bytes)]),
      [0, 1, 2, 3, 4],
    ),
    h("h2", {}, "Configs"),
    configEditor(name, topic.configs),
    h("h2", {}, "Records"),
    recordBrowser(name, topic.partitions),
  );
  return () => {};
}

function configEditor(name, configs) {
  const problem = h("div");
  const rows = Object.entries(configs).map(([key, value]) => [key, value]);
  const key = h("input", { placeholder: "retention.ms", "aria-label": "Config key" });
  const value = h("input", { placeholder: "86400000", "aria-label": "Config value" });
  const change = async (body) => {
    try {
      await api("PATCH", `/topics/${enc(name)}/configs`, body);
      route();
    } catch (e) {
      problem.replaceChildren(errorBox(e));
    }
  };
  return h(
    "div",
    { id: "configs" },
    rows.length
      ? table(
          ["Key", "Value", ""],
          rows.map(([k, v]) => [k, v, h("button", { type: "button", onclick: () => change({ delete: [k] }) }, "Reset to default")]),
        )
      : h("p", { class: "note" }, "Every config has its default."),
    h(
      "form",
      {
        onsubmit: (event) => {
          event.preventDefault();
          change({ set: { [key.value.trim()]: value.value.trim() } });
        },
      },
      h("label", {}, "Key", key),
      h("label", {}, "Value", value),
      h("button", { type: "submit" }, "Set"),
    ),
    problem,
  );
}

function recordBrowser(name, partitions) {
  const problem = h("div");
  const partition = h(
    "select",
    { "aria-label": "Partition", id: "record-partition" },
    partitions.map((p) => h("option", { value: p.partition }, `partition ${p.partition}`)),
  );
  const from = h(
    "select",
    { "aria-label": "Start", id: "record-from" },
    h("option", { value: "oldest" }, "oldest"),
    h("option", { value: "newest" }, "newest"),
    h("option", { value: "offset" }, "offset"),
    h("option", { value: "time" }, "time"),
  );
  const at = h("input", { "aria-label": "Offset or time", id: "record-at", placeholder: "offset, or 2026-12-01T10:00:00Z" });
  const filter = h("input", { "aria-label": "Containing", id: "record-filter", placeholder: "text in key, value or header" });
  const older = h("button", { type: "button", id: "records-older" }, "← Older");
  const newer = h("button", { type: "button", id: "records-newer" }, "Newer →");
  const status = h("p", { class: "note", id: "records-status", "aria-live": "polite" });
  const list = h("div", { id: "records" });

  // Every page reads from the node by offset; a text to look for goes with it, so the node
  // searches the partition (a bounded stretch of it per page) rather than the page shown.
  const show = async (query) => {
    const text = filter.value;
    const contains = text ? `&contains=${enc(text)}` : "";
    try {
      const page = await api("GET", `/topics/${enc(name)}/records?partition=${partition.value}&limit=${RECORDS_PAGE}&${query}${contains}`);
      problem.replaceChildren();
      draw(page, text);
    } catch (e) {
      problem.replaceChildren(errorBox(e));
    }
  };
  const draw = (page, text) => {
    const records = page.records;
    const range = `${count(page.log_start_offset)}–${count(Math.max(page.high_watermark - 1, 0))}`;
    const examined = `offsets ${count(page.scanned_from)}–${count(Math.max(page.next_offset - 1, page.scanned_from))} examined`;
    if (text) {
      status.textContent = `${count(records.length)} records containing “${text}”; ${examined} of ${range}.`;
    } else if (records.length) {
      status.textContent = `Offsets ${count(records[0].offset)}–${count(records[records.length - 1].offset)} of ${range}.`;
    } else {
      status.textContent = `No records here; the partition holds offsets ${range} (end ${count(page.high_watermark)}).`;
    }
    older.disabled = page.scanned_from <= page.log_start_offset;
    newer.disabled = page.next_offset >= page.high_watermark;
    older.onclick = () => show(`before=${page.scanned_from}`);
    newer.onclick = () => show(`offset=${page.next_offset}`);
    list.replaceChildren(...records.map(recordView));
  };
  const start = () => {
    const value = at.value.trim();
    switch (from.value) {
      case "newest":
        return show(`before=${Number.MAX_SAFE_INTEGER}`);
      case "offset":
        return show(`offset=${enc(value || "0")}`);
      case "time":
        return show(`timestamp=${enc(value)}`);
      default:
        return show("");
    }
  };
  const form = h(
    "form",
    {
      id: "record-form",
      onsubmit: (event) => {
        event.preventDefault();
        start();
      },
    },
    h("label", {}, "Partition", partition),
    h("label", {}, "Start at", from),
    h("label", {}, "Offset or time", at),
    h("label", {}, "Containing (exact case)", filter),
    h("button", { class: "primary", type: "submit" }, "Read"),
  );
  start();
  return h("div", {}, form, problem, h("div", { class: "bar" }, older, newer), status, list);
}

function pretty(text) {
  if (typeof text !== "string") return text;
  const t = text.trim();
  if (!(t.startsWith("{") || t.startsWith("["))) return text;
  try {
    return JSON.stringify(JSON.parse(t), null, 2);
  } catch {
    return text;
  }
}

function recordView(r) {
  const value = r.value ?? (r.value_base64 !== undefined ? `base64: ${r.value_base64}` : "null");
  const key = r.key ?? (r.key_base64 !== undefined ? `base64: ${r.key_base64}` : "null");
  const copy = h(
    "button",
    {
      type: "button",
      onclick: async () => {
        await navigator.clipboard.writeText(JSON.stringify(r, null, 2));
        copy.textContent = "Copied";
      },
    },
    "Copy as JSON",
  );
  return h(
    "article",
    { class: "record", "data-offset": r.offset },
    h("div", { class: "meta" }, h("span", {}, `offset ${r.offset}`), h("span", {}, when(r.timestamp)), h("span", {}, `key: ${key}`), copy),
    r.headers.length ? h("div", { class: "meta" }, r.headers.map(([k, v]) => h("span", {}, `${k}: ${v ?? "null"}`))) : null,
    h("pre", { class: "value" }, pretty(value)),
  );
}

async function groupsPage(root) {
  root.append(h("h1", {}, "Consumer groups"));
  const problem = h("div");
  const list = h("div");
  root.append(problem, list);
  return every(REFRESH_MS, async () => {
    try {
      const groups = await api("GET", "/groups");
      list.replaceChildren(
        groups.length === 0
          ? h("p", { class: "note" }, "No consumer groups yet.")
          : table(
              ["Group", "State", "Members"],
              groups.map((g) => [h("a", { href: `#/groups/${enc(g.group)}` }, g.group), g.state, count(g.members)]),
              [2],
            ),
      );
    } catch (e) {
      problem.replaceChildren(errorBox(e));
    }
  });
}

async function groupPage(root, id) {
  root.append(h("h1", {}, "Group ", id));
  const problem = h("div");
  const detail = h("div");
  const chart = lineChart("Lag (records behind the end)", [id], (n) => count(Math.round(n)));
  root.append(problem, detail, h("h2", {}, "Lag, last 15 minutes"), chart.box, h("h2", {}, "Reset offsets"), resetForm(id));
  return every(REFRESH_MS, async () => {
    try {
      const [group, history] = await Promise.all([api("GET", `/groups/${enc(id)}`), api("GET", "/node/history")]);
      problem.replaceChildren();
      detail.replaceChildren(
        h("p", {}, `State: ${group.state}`, group.protocol ? `, assignor ${group.protocol}` : ""),
        h("h2", {}, "Members"),
        group.members.length
          ? table(
              ["Member", "Client", "Host", "Instance", "Assigned partitions"],
              group.members.map((m) => [m.member_id, m.client_id, m.client_host, m.instance_id ?? "–", assigned(m.assignment)]),
            )
          : h("p", { class: "note" }, "No active members."),
        h("h2", {}, "Committed offsets"),
        h(
          "div",
          { id: "group-offsets" },
          table(
          ["Topic", "Partition", "Committed", "End", "Lag"],
          group.offsets.map((o) => [o.topic, o.partition, count(o.committed), count(o.end), count(o.lag)]),
          [1, 2, 3, 4],
          ),
        ),
      );
      const s = history.samples;
      chart.update(s.map((p) => p.time_ms / 1000), [s.map((p) => p.group_lag[id] ?? null)]);
    } catch (e) {
      problem.replaceChildren(errorBox(e));
    }
  });
}

/** A member's assignment as `topic: 0, 1; other: 2` ("–" when it is not a consumer's). */
function assigned(assignment) {
  if (!assignment) return "–";
  if (assignment.length === 0) return "none yet";
  return assignment.map((a) => `${a.topic}: ${a.partitions.join(", ")}`).join("; ");
}

function resetForm(id) {
  const problem = h("div");
  const preview = h("div", { id: "reset-preview" });
  const topic = h("input", { required: true, "aria-label": "Topic", id: "reset-topic" });
  const to = h(
    "select",
    { "aria-label": "To", id: "reset-to" },
    h("option", { value: "earliest" }, "earliest"),
    h("option", { value: "latest" }, "latest"),
    h("option", { value: "time" }, "time"),
  );
  const time = h("input", { "aria-label": "Time", placeholder: "2026-12-01T10:00:00Z", id: "reset-time" });
  const body = (dryRun) => ({
    topic: topic.value.trim(),
    to_earliest: to.value === "earliest",
    to_latest: to.value === "latest",
    to_datetime: to.value === "time" ? time.value.trim() : undefined,
    dry_run: dryRun,
  });
  const apply = h("button", { type: "button", class: "danger", disabled: true, id: "reset-apply" }, "Apply");
  const run = async (dryRun) => {
    try {
      const answer = await api("POST", `/groups/${enc(id)}/reset-offsets`, body(dryRun));
      problem.replaceChildren();
      preview.replaceChildren(
        h("p", {}, dryRun ? "These offsets would change:" : h("span", { class: "ok" }, "Offsets reset:")),
        table(
          ["Topic", "Partition", "Before", "After"],
          answer.offsets.map((o) => [o.topic, o.partition, count(o.before), count(o.after)]),
          [1, 2, 3],
        ),
      );
      apply.disabled = !dryRun;
    } catch (e) {
      apply.disabled = true;
      problem.replaceChildren(errorBox(e));
    }
  };
  apply.addEventListener("click", () => run(false));
  return h(
    "div",
    {},
    h("p", { class: "note" }, "Only a group with no active members can be reset. Preview first; Apply then does what the preview shows."),
    h(
      "form",
      {
        onsubmit: (event) => {
          event.preventDefault();
          run(true);
        },
      },
      h("label", {}, "Topic", topic),
      h("label", {}, "To", to),
      h("label", {}, "Time", time),
      h("button", { type: "submit" }, "Preview"),
      apply,
    ),
    problem,
    preview,
  );
}

async function pipelinesPage(root) {
  root.append(h("h1", {}, "Pipelines and plugins"));
  const problem = h("div");
  const pipelines = h("div", { id: "pipelines" });
  const plugins = h("div", { id: "plugins" });
  const throughput = lineChart("Records written per second", [], (n) => count(Math.round(n)));
  root.append(problem, h("h2", {}, "Pipelines"), pipelines, throughput.box, h("h2", {}, "New pipeline"), pipelineForm(problem), h("h2", {}, "Plugins"), plugins, h("h2", {}, "Deploy a plugin"), deployForm(problem));
  const act = async (method, path) => {
    try {
      await api(method, path);
    } catch (e) {
      problem.replaceChildren(errorBox(e));
    }
  };
  return every(REFRESH_MS, async () => {
    try {
      const [ps, plugs, history] = await Promise.all([
        api("GET", "/pipelines"),
        api("GET", "/plugins").catch((e) => e),
        api("GET", "/node/history"),
      ]);
      const names = ps.map((p) => p.spec.name);
      const s = history.samples;
      if (names.length && s.length) {
        throughput.update(
          s.map((p) => p.time_ms / 1000),
          names.map((name) => s.map((p) => p.pipeline_records_out_per_s[name] ?? null)),
          names,
        );
      }
      pipelines.replaceChildren(
        ps.length === 0
          ? h("p", { class: "note" }, "No pipelines yet.")
          : table(
              ["Pipeline", "Status", "From → to", "Lag", "In", "Out", "Dead-lettered", "Failed calls", "Last error", ""],
              ps.map((p) => [
                p.spec.name,
                p.status + (p.reason ? ` (${p.reason})` : ""),
                `${p.spec.from} → ${p.spec.to.join(", ")}`,
                count(p.lag),
                count(p.records_in),
                count(p.records_out),
                // Peek at the dead-letter topic (named after the pipeline unless given).
                h("a", { href: `#/topics/${enc(p.spec.dead_letter ?? `${p.spec.name}.dlq`)}` }, count(p.dead_lettered)),
                count(p.failed_calls),
                p.last_error ?? "",
                h(
                  "span",
                  {},
                  p.status === "paused"
                    ? h("button", { type: "button", onclick: () => act("POST", `/pipelines/${enc(p.spec.name)}/resume`) }, "Resume")
                    : h("button", { type: "button", onclick: () => act("POST", `/pipelines/${enc(p.spec.name)}/pause`) }, "Pause"),
                  " ",
                  h(
                    "button",
                    {
                      type: "button",
                      class: "danger",
                      onclick: () => window.confirm(`Delete pipeline "${p.spec.name}"?`) && act("DELETE", `/pipelines/${enc(p.spec.name)}`),
                    },
                    "Delete",
                  ),
                ),
              ]),
              [3, 4, 5, 6, 7],
            ),
      );
      plugins.replaceChildren(
        plugs instanceof Error
          ? errorBox(plugs)
          : plugs.length === 0
            ? h("p", { class: "note" }, "No plugins deployed.")
            : table(
                ["Plugin", "Active", "Versions (version: kind, size, sha256)", ""],
                plugs.map((p) => [
                  p.name,
                  p.active,
                  h(
                    "div",
                    {},
                    p.versions.map((v) =>
                      h("div", {}, `${v.version}: ${v.kind}, ${bytes(v.size_bytes)}, ${v.sha256.slice(0, 12)}…`, Object.keys(v.params).length ? ` ${JSON.stringify(v.params)}` : ""),
                    ),
                  ),
                  p.versions.length > 1
                    ? h("button", { type: "button", onclick: () => act("POST", `/plugins/${enc(p.name)}/rollback`) }, "Roll back")
                    : "",
                ]),
              ),
      );
    } catch (e) {
      problem.replaceChildren(errorBox(e));
    }
  });
}

function pipelineForm(problem) {
  const field = (label, attrs) => {
    const input = h("input", { "aria-label": label, ...attrs });
    return [input, h("label", {}, label, input)];
  };
  const [name, nameLabel] = field("Name", { required: true, id: "pipeline-name" });
  const [from, fromLabel] = field("From topic", { required: true, id: "pipeline-from" });
  const [through, throughLabel] = field("Plugins (comma separated)", { id: "pipeline-through" });
  const [to, toLabel] = field("To topic", { required: true, id: "pipeline-to" });
  const [deadLetter, deadLetterLabel] = field("Dead-letter topic", { id: "pipeline-dead-letter" });
  const start = h("select", { "aria-label": "Start", id: "pipeline-start" }, h("option", { value: "latest" }, "latest"), h("option", { value: "earliest" }, "earliest"));
  return h(
    "form",
    {
      id: "create-pipeline",
      onsubmit: async (event) => {
        event.preventDefault();
        try {
          await api("POST", "/pipelines", {
            name: name.value.trim(),
            from: from.value.trim(),
            through: through.value.split(",").map((s) => s.trim()).filter(Boolean),
            to: [to.value.trim()],
            dead_letter: deadLetter.value.trim() || null,
            from_offset: start.value,
          });
          problem.replaceChildren();
          route();
        } catch (e) {
          problem.replaceChildren(errorBox(e));
        }
      },
    },
    nameLabel,
    fromLabel,
    throughLabel,
    toLabel,
    deadLetterLabel,
    h("label", {}, "Start", start),
    h("button", { class: "primary", type: "submit" }, "Create pipeline"),
  );
}

function deployForm(problem) {
  const name = h("input", { required: true, "aria-label": "Plugin name", id: "plugin-name" });
  const file = h("input", { type: "file", accept: ".wasm", required: true, "aria-label": "Module", id: "plugin-file" });
  const params = h("input", { "aria-label": "Params", placeholder: "pattern=error", id: "plugin-params" });
  return h(
    "form",
    {
      id: "deploy-plugin",
      onsubmit: async (event) => {
        event.preventDefault();
        try {
          const query = new URLSearchParams(parseConfigs(params.value)).toString();
          const module = await file.files[0].arrayBuffer();
          await api("PUT", `/plugins/${enc(name.value.trim())}${query ? `?${query}` : ""}`, module, "application/wasm");
          problem.replaceChildren();
          route();
        } catch (e) {
          problem.replaceChildren(errorBox(e));
        }
      },
    },
    h("label", {}, "Name", name),
    h("label", {}, "Module (.wasm)", file),
    h("label", {}, "Params (key=value, comma separated)", params),
    h("button", { class: "primary", type: "submit" }, "Deploy"),
  );
}

async function sqlPage(root) {
  root.append(h("h1", {}, "SQL"));
  const history = JSON.parse(localStorage.getItem(SQL_HISTORY_KEY) || "[]");
  const editor = h("textarea", { id: "sql-editor", rows: 6, "aria-label": "Statement", spellcheck: "false" }, history[0] ?? "SELECT * FROM weir.topics");
  const run = h("button", { class: "primary", type: "button", id: "sql-run" }, "Run (Ctrl+Enter)");
  const past = h("select", { "aria-label": "History", id: "sql-history" }, h("option", { value: "" }, "History…"), history.map((s) => h("option", { value: s }, s.slice(0, 80))));
  const problem = h("div");
  const result = h("div", { id: "sql-result" });
  const tables = h("div", { id: "sql-tables" }, h("p", { class: "note" }, "Loading tables…"));
  past.addEventListener("change", () => {
    if (past.value) editor.value = past.value;
  });
  const execute = async () => {
    const sql = editor.value.trim();
    if (!sql) return;
    const kept = [sql, ...history.filter((s) => s !== sql)].slice(0, SQL_HISTORY_MAX);
    localStorage.setItem(SQL_HISTORY_KEY, JSON.stringify(kept));
    run.disabled = true;
    try {
      const answer = await api("POST", "/sql", { sql });
      problem.replaceChildren();
      showAnswer(result, answer);
    } catch (e) {
      result.replaceChildren();
      problem.replaceChildren(errorBox(e));
    } finally {
      run.disabled = false;
    }
  };
  run.addEventListener("click", execute);
  editor.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      execute();
    }
  });
  root.append(
    h("div", { class: "split" }, h("div", {}, editor, h("div", { class: "bar" }, run, past), problem, result), h("aside", {}, h("h2", {}, "Tables"), tables)),
  );
  api("POST", "/sql", { sql: "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema NOT IN ('information_schema', 'pg_catalog') ORDER BY 1, 2" })
    .then((answer) =>
      tables.replaceChildren(
        h(
          "ul",
          {},
          answer.rows.map((r) => {
            const topic = r.table_schema === "public";
            const shown = topic ? r.table_name : `${r.table_schema}.${r.table_name}`;
            const name = topic ? quoteName(r.table_name) : `${quoteName(r.table_schema)}.${quoteName(r.table_name)}`;
            const pick = (event) => {
              event.preventDefault();
              editor.value = `SELECT * FROM ${name} LIMIT 100`;
              editor.focus();
            };
            return h("li", {}, h("a", { href: "#/sql", onclick: pick }, shown));
          }),
        ),
      ),
    )
    .catch((e) => tables.replaceChildren(errorBox(e)));
  editor.focus();
  return () => {};
}

/** A name as SQL reads it: quoted unless it is a plain lower-case identifier. */
function quoteName(name) {
  return /^[a-z_][a-z0-9_]*$/.test(name) ? name : `"${name.replaceAll('"', '""')}"`;
}

const TIME_TYPE = /^Timestamp/;
const NUMBER_TYPE = /^(Int|UInt|Float|Decimal)/;

function showAnswer(result, answer) {
  const columns = answer.columns;
  const rows = answer.rows;
  let start = 0;
  const info = h("p", { class: "note", id: "sql-count" });
  const body = h("div");
  const prev = h("button", { type: "button" }, "← Previous");
  const next = h("button", { type: "button" }, "Next →");
  const cell = (v) => (v === null || v === undefined ? "NULL" : typeof v === "object" ? JSON.stringify(v) : String(v));
  const draw = () => {
    const page = rows.slice(start, start + SQL_PAGE_ROWS);
    info.textContent = `${count(rows.length)} rows` + (rows.length > SQL_PAGE_ROWS ? `, ${start + 1}–${start + page.length} shown` : "");
    prev.disabled = start === 0;
    next.disabled = start + SQL_PAGE_ROWS >= rows.length;
    const plan = columns.length === 2 && columns[0].name === "plan_type";
    body.replaceChildren(
      plan
        ? h("div", { id: "sql-plan" }, rows.map((r) => planView(r.plan_type, r.plan)))
        : table(columns.map((c) => c.name), page.map((r) => columns.map((c) => cell(r[c.name])))),
    );
  };
  prev.addEventListener("click", () => { start -= SQL_PAGE_ROWS; draw(); });
  next.addEventListener("click", () => { start += SQL_PAGE_ROWS; draw(); });
  const download = h("button", { type: "button", onclick: () => downloadCsv(columns, rows) }, "Download CSV");
  result.replaceChildren(h("div", { class: "bar" }, info, prev, next, download), body);
  draw();
  const time = columns.find((c) => TIME_TYPE.test(c.type));
  const numbers = columns.filter((c) => NUMBER_TYPE.test(c.type));
  if (time && numbers.length && rows.length > 1) {
    // Arrow writes times without a zone when the column has none: those are UTC.
    const at = (r) => Date.parse(/([zZ]|[+-]\d\d:?\d\d)$/.test(r[time.name]) ? r[time.name] : `${r[time.name]}Z`);
    const sorted = rows.filter((r) => r[time.name] !== null).sort((a, b) => at(a) - at(b));
    const chart = lineChart(`${numbers.map((c) => c.name).join(", ")} over ${time.name}`, numbers.map((c) => c.name), (n) => count(n));
    result.append(chart.box);
    chart.update(
      sorted.map((r) => at(r) / 1000),
      numbers.map((c) => sorted.map((r) => (r[c.name] === null ? null : Number(r[c.name])))),
    );
  }
}

/**
 * One plan of an EXPLAIN answer. A plan run by EXPLAIN ANALYZE becomes a table, an operator a
 * row (indented as in the tree) with its rows out and compute time beside it; the plan as
 * DataFusion wrote it stays below.
 */
function planView(type, plan) {
  const lines = plan.split("\n").filter((l) => l.trim());
  const operators = lines.map((line) => {
    const depth = (line.length - line.trimStart().length) / 2;
    let text = line.trim();
    const metrics = {};
    const at = text.lastIndexOf(", metrics=[");
    if (at >= 0 && text.endsWith("]")) {
      for (const pair of text.slice(at + ", metrics=[".length, -1).split(", ")) {
        const eq = pair.indexOf("=");
        if (eq > 0) metrics[pair.slice(0, eq)] = pair.slice(eq + 1);
      }
      text = text.slice(0, at);
    }
    const split = text.search(/[:,]/);
    const name = split < 0 ? text : text.slice(0, split);
    const details = split < 0 ? "" : text.slice(split + 1).trim();
    return { depth, name, details, metrics };
  });
  const raw = h("pre", {}, plan);
  if (!operators.some((o) => Object.keys(o.metrics).length)) return h("div", {}, h("h2", {}, type), raw);
  const MAIN = ["output_rows", "elapsed_compute"];
  return h(
    "div",
    {},
    h("h2", {}, type),
    table(
      ["Operator", "Rows out", "Compute time", "Other metrics", "Details"],
      operators.map((o) => [
        `${"\u00a0\u00a0".repeat(o.depth)}${o.depth ? "└\u00a0" : ""}${o.name}`,
        o.metrics.output_rows ?? "",
        o.metrics.elapsed_compute ?? "",
        Object.entries(o.metrics)
          .filter(([k]) => !MAIN.includes(k))
          .map(([k, v]) => `${k}=${v}`)
          .join(", "),
        o.details,
      ]),
      [1, 2],
    ),
    h("details", {}, h("summary", {}, "As written"), raw),
  );
}

function downloadCsv(columns, rows) {
  const quote = (v) => {
    const s = v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v);
    return /[",\n\r]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
  };
  const lines = [columns.map((c) => quote(c.name)).join(","), ...rows.map((r) => columns.map((c) => quote(r[c.name])).join(","))];
  const url = URL.createObjectURL(new Blob([`${lines.join("\n")}\n`], { type: "text/csv" }));
  const a = h("a", { href: url, download: "answer.csv" });
  document.body.append(a);
  a.click();
  a.remove();
  URL.revokeObjectURL(url);
}

// ---- the token --------------------------------------------------------------------------------

function loginPage(root, message) {
  const token = h("input", { type: "password", id: "token", autocomplete: "current-password", "aria-label": "Admin token", required: true });
  root.replaceChildren(
    h("h1", {}, "Sign in"),
    h("p", {}, "This node asks for its admin token (the --admin-token it was started with)."),
    message ? errorBox({ message }) : null,
    h(
      "form",
      {
        id: "login",
        onsubmit: (event) => {
          event.preventDefault();
          sessionStorage.setItem(TOKEN_KEY, token.value);
          route();
        },
      },
      h("label", {}, "Admin token", token),
      h("button", { class: "primary", type: "submit" }, "Sign in"),
    ),
  );
  token.focus();
}

// ---- routing ----------------------------------------------------------------------------------

const PAGES = [
  [/^$/, "overview", overviewPage],
  [/^topics$/, "topics", topicsPage],
  [/^topics\/(.+)$/, "topics", topicPage],
  [/^groups$/, "groups", groupsPage],
  [/^groups\/(.+)$/, "groups", groupPage],
  [/^pipelines$/, "pipelines", pipelinesPage],
  [/^sql$/, "sql", sqlPage],
];

async function route() {
  stopRefresh();
  stopRefresh = () => {};
  const path = location.hash.replace(/^#\/?/, "");
  const [pattern, page, render] = PAGES.find(([p]) => p.test(path)) ?? PAGES[0];
  const args = (path.match(pattern) ?? []).slice(1).map(decodeURIComponent);
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("current", link.dataset.page === page);
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.getElementById("logout").hidden = !sessionStorage.getItem(TOKEN_KEY);
  const root = main();
  // `data-shown` names the route once its page is drawn; until then the old page may linger.
  delete root.dataset.shown;
  // Ask for the token before drawing a page the API would refuse.
  try {
    await api("GET", "/node");
  } catch (e) {
    if (e.status === 401 || e.status === 403) {
      loginPage(root, sessionStorage.getItem(TOKEN_KEY) ? e.message : null);
      root.dataset.shown = path;
      return;
    }
  }
  root.replaceChildren();
  const stop = await render(root, ...args);
  stopRefresh = stop ?? (() => {});
  root.dataset.shown = path;
  // A page that put the focus somewhere (the SQL editor) keeps it there.
  if (!root.contains(document.activeElement)) root.focus();
}

document.getElementById("logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  route();
});
// The page's own links are routes, so skipping to the content moves the focus instead.
document.getElementById("skip").addEventListener("click", (event) => {
  event.preventDefault();
  main().focus();
});
window.addEventListener("hashchange", route);
route();
