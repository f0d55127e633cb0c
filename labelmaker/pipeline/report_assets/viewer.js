// labelmaker batch report: an interactive 3D view of a scene's labelled points on a 2D canvas
// (no WebGL, no library: each point is a small square drawn into the canvas's pixels with a depth
// buffer). Data: window.SCENE_POINTS from scenes/<scene>.js: positions quantised to uint16 in the
// bounding box (min, span), RGB uint8, unified class id uint8, base64; colours of classes from
// window.CLASSES (assets/data.js). World z is up. Drag turns, shift-drag moves, the wheel zooms.
(function () {
  "use strict";
  var canvas = document.getElementById("view3d");
  var src = window.SCENE_POINTS;
  if (!canvas || !src) return;
  var info = document.getElementById("view3d-info");
  var n = src.n;
  var bytes = Uint8Array.from(atob(src.data), function (c) { return c.charCodeAt(0); });
  var view = new DataView(bytes.buffer);
  var pos = new Float32Array(3 * n);
  var centre = [0, 0, 0], radius = 1e-6;
  for (var i = 0; i < 3 * n; i++) {
    var axis = i % 3;
    pos[i] = src.min[axis] + view.getUint16(2 * i, true) / 65535 * src.span[axis];
  }
  for (var a = 0; a < 3; a++) centre[a] = src.min[a] + src.span[a] / 2;
  for (i = 0; i < n; i++) {
    var dx = pos[3 * i] - centre[0], dy = pos[3 * i + 1] - centre[1], dz = pos[3 * i + 2] - centre[2];
    radius = Math.max(radius, Math.sqrt(dx * dx + dy * dy + dz * dz));
  }
  var rgb = bytes.subarray(6 * n, 9 * n), ids = bytes.subarray(9 * n, 10 * n);
  var palette = (window.CLASSES && window.CLASSES.colors) || [];
  var names = (window.CLASSES && window.CLASSES.names) || [];
  var labelRgb = new Uint8Array(3 * n);
  for (i = 0; i < n; i++) {
    var c = palette[ids[i]] || [128, 128, 128];
    labelRgb[3 * i] = c[0]; labelRgb[3 * i + 1] = c[1]; labelRgb[3 * i + 2] = c[2];
  }
  var cam = { yaw: -0.6, pitch: 0.75, dist: 2.6, panX: 0, panY: 0, mode: "labels" };
  var home = JSON.parse(JSON.stringify(cam));
  var ctx = canvas.getContext("2d");
  var W = canvas.width, H = canvas.height;
  var image = ctx.createImageData(W, H);
  var depth = new Float32Array(W * H);
  var pending = false;

  function draw() {
    pending = false;
    var px = image.data;
    for (var k = 0; k < px.length; k += 4) { px[k] = 250; px[k + 1] = 250; px[k + 2] = 250; px[k + 3] = 255; }
    depth.fill(Infinity);
    var cy = Math.cos(cam.yaw), sy = Math.sin(cam.yaw), cp = Math.cos(cam.pitch), sp = Math.sin(cam.pitch);
    var f = Math.min(W, H) * 1.5, d = cam.dist * radius;
    var colours = cam.mode === "rgb" ? rgb : labelRgb;
    var drawn = 0, size = n > 20000 ? 1 : 2;
    for (var i = 0; i < n; i++) {
      var x = pos[3 * i] - centre[0], y = pos[3 * i + 1] - centre[1], z = pos[3 * i + 2] - centre[2];
      // turn about z (yaw), then tilt (pitch): camera looks along -depth towards the centre
      var x1 = cy * x - sy * y, y1 = sy * x + cy * y;
      var up = cp * z + sp * y1, fwd = -sp * z + cp * y1;
      var zc = d + fwd;
      if (zc <= 1e-3) continue;
      var u = Math.round(W / 2 + f * (x1 / radius) / (zc / radius) + cam.panX);
      var v = Math.round(H / 2 - f * (up / radius) / (zc / radius) + cam.panY);
      if (u < 0 || v < 0 || u >= W - size || v >= H - size) continue;
      var seen = false;
      for (var b = 0; b < size; b++) {
        for (var a = 0; a < size; a++) {
          var p = (v + b) * W + u + a;
          if (zc < depth[p]) {
            depth[p] = zc;
            px[4 * p] = colours[3 * i]; px[4 * p + 1] = colours[3 * i + 1]; px[4 * p + 2] = colours[3 * i + 2];
            seen = true;
          }
        }
      }
      if (seen) drawn++;
    }
    ctx.putImageData(image, 0, 0);
    canvas.setAttribute("data-drawn", String(drawn));
    if (info) info.textContent = n + " points, colour: " + (cam.mode === "rgb" ? "capture RGB" : "labels");
  }
  function redraw() { if (!pending) { pending = true; requestAnimationFrame(draw); } }

  var drag = null;
  canvas.addEventListener("mousedown", function (ev) { drag = { x: ev.clientX, y: ev.clientY, shift: ev.shiftKey }; ev.preventDefault(); });
  window.addEventListener("mouseup", function () { drag = null; });
  window.addEventListener("mousemove", function (ev) {
    if (!drag) return;
    var dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
    drag.x = ev.clientX; drag.y = ev.clientY;
    if (drag.shift) { cam.panX += dx; cam.panY += dy; }
    else {
      cam.yaw -= dx * 0.01;
      cam.pitch = Math.max(-1.55, Math.min(1.55, cam.pitch + dy * 0.01));
    }
    redraw();
  });
  canvas.addEventListener("wheel", function (ev) {
    cam.dist = Math.max(0.3, Math.min(20, cam.dist * Math.exp(ev.deltaY * 0.001)));
    ev.preventDefault(); redraw();
  }, { passive: false });
  canvas.addEventListener("mousemove", function (ev) {
    // the class under the cursor: the nearest drawn point's label
    var r = canvas.getBoundingClientRect();
    var u = Math.round((ev.clientX - r.left) * W / r.width), v = Math.round((ev.clientY - r.top) * H / r.height);
    if (u < 0 || v < 0 || u >= W || v >= H || drag) return;
    canvas.title = "";
    var p = v * W + u;
    if (depth[p] === Infinity) return;
    var c = image.data;
    for (var i = 0; i < names.length; i++) {
      var col = palette[i];
      if (cam.mode === "labels" && col && col[0] === c[4 * p] && col[1] === c[4 * p + 1] && col[2] === c[4 * p + 2]) {
        canvas.title = names[i]; break;
      }
    }
  });
  document.querySelectorAll(".vctl button").forEach(function (btn) {
    btn.addEventListener("click", function () {
      var m = btn.getAttribute("data-mode");
      if (m === "reset") { var mode = cam.mode; cam = JSON.parse(JSON.stringify(home)); cam.mode = mode; }
      else cam.mode = m;
      redraw();
    });
  });
  draw();
  canvas.setAttribute("data-points", String(n));
  document.body.setAttribute("data-viewer", "ready");
})();
