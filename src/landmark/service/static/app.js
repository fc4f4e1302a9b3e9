// The landmark web page: plain JS over the JSON API (no build step).
"use strict";
const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;
let lastFile = null, lastResult = null;
const pretty = (name) => (name == null ? name : String(name).replace(/_/g, " "));

async function api(url, opts) {
  const res = await fetch(url, opts);
  const body = (res.headers.get("content-type") || "").includes("json") ? await res.json() : null;
  if (!res.ok) throw new Error((body && body.error) || `${res.status} ${res.statusText}`);
  return body;
}

function setStatus(el, text, isError) {
  el.textContent = text || "";
  el.classList.toggle("error", !!isError);
}

function card(item, opts = {}) {
  const div = document.createElement("div");
  div.className = "card" + (opts.best ? " best" : "");
  const img = document.createElement("img");
  img.src = item.thumbnail; img.alt = item.name || item.id; img.loading = "lazy";
  const meta = document.createElement("div");
  meta.className = "meta";
  const title = document.createElement("b");
  title.textContent = pretty(item.name) || (item.landmark_id != null ? `landmark ${item.landmark_id}` : "unlabelled");
  const sub = document.createElement("span");
  sub.className = "muted";
  sub.textContent = opts.subtitle != null ? opts.subtitle : (item.score != null ? `score ${item.score.toFixed(3)}` : item.id);
  meta.append(title, sub);
  div.append(img, meta);
  div.title = item.id;
  if (opts.onDelete) {
    const del = document.createElement("button");
    del.className = "del"; del.textContent = "\u00d7"; del.title = "remove from the store";
    del.onclick = (ev) => { ev.stopPropagation(); opts.onDelete(item, div); };
    div.append(del);
  }
  if (opts.onClick) div.onclick = () => opts.onClick(item);
  return div;
}

// -- tabs -----------------------------------------------------------------------------------
document.querySelectorAll(".tab").forEach((b) => b.onclick = () => showTab(b.dataset.tab));
function showTab(name) {
  document.querySelectorAll(".tab").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
  document.querySelectorAll(".panel").forEach((p) => p.hidden = p.id !== `tab-${name}`);
  if (name === "browse") loadLandmarks();
}

async function loadInfo() {
  try {
    const h = await api("/health");
    $("store-info").textContent = `${h.images} photos, ${h.landmarks} named landmarks \u00b7 ${h.model}`;
  } catch (e) { $("store-info").textContent = "service unavailable"; }
}

// -- recognise ------------------------------------------------------------------------------
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => { if (e.dataTransfer.files.length) recognize(e.dataTransfer.files[0]); });
$("file").addEventListener("change", (e) => { if (e.target.files.length) recognize(e.target.files[0]); });

async function recognize(file) {
  lastFile = file;
  const status = $("status");
  setStatus(status, `Recognising ${file.name}\u2026`);
  $("result").hidden = true; $("matches-block").hidden = true; $("evidence-block").hidden = true;
  $("similar-block").hidden = true;
  const form = new FormData();
  form.append("photo", file);
  let r;
  try {
    r = await api("/recognize", { method: "POST", body: form });
  } catch (e) {
    setStatus(status, `Could not recognise ${file.name}: ${e.message}`, true);
    return;
  }
  lastResult = r;
  setStatus(status, "");
  $("query-img").src = URL.createObjectURL(file);
  // a photo the filters call a non-landmark keeps its nearest landmark as evidence only: it is not named,
  // and not offered to be added under that landmark. The verdict says why, in the words of its own evidence
  // (a unanimous vote with verified keypoints is never filtered: the server's decide() keeps it)
  const filtered = r.grade === "non-landmark";
  const known = r.landmark_id != null && !filtered;
  const nearest = r.landmark_id != null ? (pretty(r.name) || `landmark ${r.landmark_id}`) : null;
  $("landmark-name").textContent = known ? nearest : filtered ? "Not recognised as a landmark" : "No landmark recognised";
  $("landmark-id").textContent = known ? `landmark id ${r.landmark_id}`
    : filtered ? `${filterReasons(r)}${nearest ? ` (nearest landmark: ${nearest}${verifiedButSplit(r)})` : ""}`
    : "no labelled photo in the store is close";
  const pct = Math.round(100 * r.score);
  $("bar-fill").style.width = `${pct}%`;
  $("bar-fill").style.background = r.score >= 0.6 ? "var(--ok)" : r.score >= 0.4 ? "var(--warn)" : "var(--bad)";
  $("score").textContent = `confidence ${r.score.toFixed(3)}`;
  const grade = $("grade");
  grade.hidden = r.grade == null;
  if (r.grade != null) { grade.textContent = String(r.grade); grade.className = `grade ${String(r.grade).toLowerCase()}`; }
  $("votes").textContent = r.matches.length ? `${r.votes} of the ${r.matches.length} nearest labelled photos agree` : "";
  $("add-this").hidden = !known;
  $("result").hidden = false;

  const grid = $("matches");
  grid.replaceChildren(...r.matches.map((m, i) => card(m, {
    best: i === 0, subtitle: m.inliers != null ? `score ${m.score.toFixed(3)}, ${m.inliers} inliers` : undefined })));
  $("matches-block").hidden = r.matches.length === 0;
  showEvidence(r);
  showSimilar(file);
  loadInfo();
}

// every stored photo, labelled or not, ranked by retrieval (DBA + alpha-QE and re-ranking as configured)
async function showSimilar(file) {
  const form = new FormData();
  form.append("photo", file);
  try {
    const s = await api("/search?k=12", { method: "POST", body: form });
    if (file !== lastFile) return;                     // another photo was dropped meanwhile
    $("similar").replaceChildren(...s.matches.map((m) => card(m, {
      subtitle: m.inliers ? `score ${m.score.toFixed(3)}, ${m.inliers} inliers` : `score ${m.score.toFixed(3)}` })));
    $("similar-note").textContent = `(all stored photos${s.expanded ? "; database-side augmentation and query expansion" : ""})`;
    $("similar-block").hidden = s.matches.length === 0;
  } catch (e) {
    $("similar-note").textContent = `(search failed: ${e.message})`;
    $("similar-block").hidden = false;
  }
}

// why the filters call a photo a non-landmark, from its evidence (recognition pipeline's evidence dict)
const REASONS = {
  distractor: (f) => "it is as close to photos known not to be landmarks"
    + (f.distractor && f.distractor.min_top_k != null ? ` (similarity ${f.distractor.min_top_k.toFixed(3)} > ${f.distractor.threshold})` : ""),
  object_prior: (f) => `the object prior sees ${f.object_prior && f.object_prior.top_group ? `"${pretty(f.object_prior.top_group)}"` : "an object"}, not a place`,
  detector: () => "the object detector found an object filling the photo",
};
function filterReasons(r) {
  const f = (r.evidence && r.evidence.filters) || {};
  const named = (f.non_landmark || []).map((n) => (REASONS[n] ? REASONS[n](f) : n));
  return named.length ? named.join("; ") : "the non-landmark filters rejected it";
}

// verified keypoints with the nearest landmark that did not keep the photo: say which part of the evidence fell short
function verifiedButSplit(r) {
  const v = r.evidence && r.evidence.verification;
  if (!v || v.best_inliers == null || v.best_inliers < v.needed) return "";
  const verified = `; ${v.best_inliers} keypoints verified, but`;
  return v.shows_landmark ? `${verified} that does not overrule the object detector`
    : !v.unanimous ? `${verified} only ${r.votes} of the ${r.matches.length} nearest labelled photos agree`
    : `${verified} recognition.evidence_overrules is off`;
}

function showEvidence(r) {
  const block = $("evidence-block"), img = $("evidence"), note = $("evidence-note");
  block.hidden = r.matches.length === 0;
  img.hidden = true;
  if (!r.evidence_url) {
    note.textContent = "Local features are not available for this store, so no keypoint matches can be drawn.";
    return;
  }
  note.textContent = "Verifying keypoints\u2026";
  fetch(r.evidence_url).then(async (res) => {
    if (!res.ok) {
      const b = await res.json().catch(() => ({}));
      note.textContent = b.error || `no keypoint evidence (${res.status})`;
      return;
    }
    img.src = URL.createObjectURL(await res.blob());
    img.hidden = false;
    note.textContent = `Lines join keypoints of your photo (left) and of ${r.matches[0].id} (right) that agree under one geometric transform.`
      + (r.grade === "non-landmark" ? ` Not recognised as a landmark all the same: ${filterReasons(r)}${verifiedButSplit(r)}.` : "");
  }).catch((e) => { note.textContent = `no keypoint evidence: ${e.message}`; });
}

$("add-this").onclick = async () => {
  if (!lastFile || !lastResult) return;
  const form = new FormData();
  form.append("photo", lastFile);
  form.append("landmark_id", lastResult.landmark_id);
  if (lastResult.name) form.append("name", lastResult.name);
  try {
    const added = await api("/images", { method: "POST", body: form });
    setStatus($("status"), `Added as ${added.id} (${pretty(added.name) || added.landmark_id}).`);
    $("add-this").hidden = true;
    loadInfo();
  } catch (e) { setStatus($("status"), `Could not add the photo: ${e.message}`, true); }
};

// -- browse ---------------------------------------------------------------------------------
let browse = { landmark: null, offset: 0 };
async function loadLandmarks() {
  $("browse-detail").hidden = true;
  const grid = $("landmarks");
  grid.hidden = false;
  try {
    const { landmarks } = await api("/landmarks");
    landmarks.sort((a, b) => (a.landmark_id == null) - (b.landmark_id == null));   // unlabelled photos last
    grid.replaceChildren(...landmarks.map((l) => card(
      { id: l.cover, thumbnail: l.cover_thumbnail, name: l.name || (l.landmark_id == null ? "unlabelled photos" : null), landmark_id: l.landmark_id },
      { subtitle: `${l.images} photo${l.images === 1 ? "" : "s"}`, onClick: () => openLandmark(l) })));
  } catch (e) { grid.textContent = `Could not list landmarks: ${e.message}`; }
}

async function openLandmark(l) {
  browse = { landmark: l, offset: 0 };
  $("landmarks").hidden = true;
  $("browse-detail").hidden = false;
  $("browse-title").textContent = l.landmark_id == null ? "Unlabelled photos" : `${pretty(l.name) || "landmark"} (${l.landmark_id})`;
  $("browse-grid").replaceChildren();
  await morePhotos();
}

async function morePhotos() {
  const l = browse.landmark, limit = 60;
  const q = l.landmark_id == null ? "unlabelled=true" : `landmark_id=${l.landmark_id}`;
  const page = await api(`/images?${q}&offset=${browse.offset}&limit=${limit}`);
  browse.offset += page.images.length;
  $("browse-grid").append(...page.images.map((im) => card(im, { subtitle: im.id, onDelete: removePhoto })));
  $("browse-more").hidden = page.images.length < limit;
}

async function removePhoto(item, el) {
  if (!confirm(`Remove ${item.id} from the store?`)) return;
  try { await api(`/images/${enc(item.id)}`, { method: "DELETE" }); el.remove(); loadInfo(); }
  catch (e) { alert(`Could not remove ${item.id}: ${e.message}`); }
}
$("browse-back").onclick = loadLandmarks;
$("browse-more").onclick = morePhotos;

// -- add ------------------------------------------------------------------------------------
$("add-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const files = [...$("add-files").files], status = $("add-status");
  let ok = 0;
  for (const f of files) {
    const form = new FormData();
    form.append("photo", f);
    if ($("add-landmark").value) form.append("landmark_id", $("add-landmark").value);
    if ($("add-name").value) form.append("name", $("add-name").value);
    setStatus(status, `Adding ${f.name}\u2026`);
    try {
      const added = await api("/images", { method: "POST", body: form });
      $("add-grid").append(card(added, { subtitle: `added as ${added.id}` }));
      ok++;
    } catch (err) {
      setStatus(status, `${f.name}: ${err.message}`, true);
      await new Promise((r) => setTimeout(r, 1200));
    }
  }
  setStatus(status, `Added ${ok} of ${files.length} photo${files.length === 1 ? "" : "s"}.`, ok < files.length);
  loadInfo();
});

loadInfo();
