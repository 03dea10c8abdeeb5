/* Emojimation dashboard: the source page's video and its timelines, in sync, in the browser only.
 *
 * - A cursor (#timeline-cursor, a line over every track) follows the <video> element's currentTime:
 *   one requestAnimationFrame loop reads the time and the figure's x axis and moves the line; no
 *   server round-trip, no Plotly redraw.
 * - A click on a timeline seeks the video to the time under the pointer; a drag along a track's
 *   coloured ribbon scrubs (a drag on the curves still zooms, as before).
 * - A button with `data-seek="SECONDS"` (the track cards' "first seen" buttons) seeks there.
 *
 * Listeners sit on the document (capture phase), so they survive Dash re-rendering the page and
 * need no set-up per page. Served from assets/, so under the same auth as everything else.
 */
(function () {
  "use strict";
  if (window.emojimationPlayer) { return; }
  const VIDEO = "timeline-video", GRAPH = "timeline-graph", CURSOR = "timeline-cursor";
  const CLICK_SLOP_PX = 5;

  function video() { return document.getElementById(VIDEO); }
  function plot() {
    const outer = document.getElementById(GRAPH);
    const gd = outer && outer.querySelector(".js-plotly-plot");
    const layout = gd && gd._fullLayout;
    return layout && layout.xaxis && layout._size && typeof layout.xaxis.l2p === "function" ? gd : null;
  }

  /* Where the pointer is over the figure: its time, and whether it is on a track's plot or ribbon. */
  function locate(gd, clientX, clientY) {
    const layout = gd._fullLayout, xa = layout.xaxis, box = gd.getBoundingClientRect();
    const px = clientX - box.left, py = clientY - box.top;
    if (px < xa._offset || px > xa._offset + xa._length) { return null; }
    for (const key of Object.keys(layout)) {
      const match = /^yaxis(\d*)$/.exec(key);
      const ya = match && layout[key];
      if (!ya || typeof ya._offset !== "number") { continue; }
      if (py >= ya._offset && py <= ya._offset + ya._length) {
        const number = match[1] ? Number(match[1]) : 1;
        return { time: xa.p2l(px - xa._offset), ribbon: number % 2 === 1 };  // odd axes: the ribbons
      }
    }
    return null;
  }

  function seek(seconds) {
    const v = video();
    if (!v || !isFinite(seconds)) { return; }
    const end = isFinite(v.duration) && v.duration > 0 ? v.duration : Infinity;
    v.currentTime = Math.min(Math.max(0, seconds), end);
    place();
  }

  /* Move the cursor to the video's current time (hidden outside the visible range). */
  function place() {
    const cursor = document.getElementById(CURSOR);
    if (!cursor) { return; }
    const v = video(), gd = plot();
    if (!v || !gd) {
      if (cursor.style.display !== "none") { cursor.style.display = "none"; }
      return;
    }
    const layout = gd._fullLayout, xa = layout.xaxis, t = v.currentTime;
    cursor.dataset.time = t.toFixed(3);
    const low = Math.min(xa.range[0], xa.range[1]), high = Math.max(xa.range[0], xa.range[1]);
    if (!(t >= low && t <= high) || !cursor.offsetParent) {
      cursor.style.display = t >= low && t <= high ? "block" : "none";
      return;
    }
    const box = gd.getBoundingClientRect(), parent = cursor.offsetParent.getBoundingClientRect();
    const left = (box.left - parent.left + xa._offset + xa.l2p(t)).toFixed(1) + "px";
    const top = (box.top - parent.top + layout._size.t).toFixed(1) + "px";
    const height = layout._size.h.toFixed(1) + "px";
    if (cursor.style.left !== left) { cursor.style.left = left; }
    if (cursor.style.top !== top) { cursor.style.top = top; }
    if (cursor.style.height !== height) { cursor.style.height = height; }
    if (cursor.style.display !== "block") { cursor.style.display = "block"; }
  }

  function loop() {
    try { place(); } catch (error) { /* a figure mid-redraw: try again next frame */ }
    window.requestAnimationFrame(loop);
  }

  let pressed = null;  // {x, y, time, scrub} while the pointer is down on the timeline

  function down(event) {
    if (event.button !== 0 || !video()) { return; }
    const outer = document.getElementById(GRAPH);
    const gd = plot();
    if (!gd || !outer.contains(event.target)) { return; }
    const where = locate(gd, event.clientX, event.clientY);
    if (!where) { return; }
    if (event.type === "pointerdown" || !pressed) {
      pressed = { x: event.clientX, y: event.clientY, time: where.time, scrub: where.ribbon };
    }
    if (pressed.scrub) {  // the ribbon scrubs: Plotly must not start a zoom box
      event.stopPropagation();
      event.preventDefault();
      seek(where.time);
    }
  }

  function move(event) {
    if (!pressed || !pressed.scrub) { return; }
    const gd = plot();
    if (!gd) { return; }
    const layout = gd._fullLayout, xa = layout.xaxis, box = gd.getBoundingClientRect();
    const px = Math.min(Math.max(event.clientX - box.left - xa._offset, 0), xa._length);
    event.stopPropagation();
    event.preventDefault();
    seek(xa.p2l(px));
  }

  function up(event) {
    if (!pressed) { return; }
    const start = pressed;
    pressed = null;
    if (start.scrub) { event.stopPropagation(); return; }
    const moved = Math.hypot(event.clientX - start.x, event.clientY - start.y);
    if (moved <= CLICK_SLOP_PX) { seek(start.time); }  // a click, not a zoom drag
  }

  function click(event) {
    const button = event.target.closest && event.target.closest("[data-seek]");
    if (!button) { return; }
    const v = video();
    seek(Number(button.dataset.seek));
    if (v && v.scrollIntoView) { v.scrollIntoView({ block: "nearest", behavior: "smooth" }); }
  }

  document.addEventListener("pointerdown", down, true);
  document.addEventListener("mousedown", down, true);
  document.addEventListener("pointermove", move, true);
  document.addEventListener("mousemove", move, true);
  document.addEventListener("pointerup", up, true);
  document.addEventListener("click", click, true);
  window.requestAnimationFrame(loop);
  window.emojimationPlayer = { seek: seek, place: place, locate: locate };
})();
