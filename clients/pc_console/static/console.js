// Live progress of a running job: poll its status every second and reload the page when it ends.
(function () {
  var el = document.getElementById("job");
  if (!el || el.dataset.terminal === "yes") return;
  var id = el.dataset.job;
  function bar(p) {
    var d = document.createElement("div"); d.className = "step";
    var s = document.createElement("span"); s.textContent = p.step + " [" + p.party + "]";
    var g = document.createElement("progress"); g.max = p.total || 1; g.value = p.done;
    d.appendChild(s); d.appendChild(g); d.appendChild(document.createTextNode(" " + p.done + "/" + p.total));
    return d;
  }
  function poll() {
    fetch("/jobs/" + encodeURIComponent(id) + "/status.json", {credentials: "same-origin"})
      .then(function (r) { return r.json(); })
      .then(function (doc) {
        if (doc.error) return;
        document.getElementById("state").textContent = doc.state;
        var box = document.getElementById("progress"); box.textContent = "";
        doc.progress.forEach(function (p) { box.appendChild(bar(p)); });
        if (["succeeded", "failed", "cancelled"].indexOf(doc.state) >= 0) { window.location.reload(); return; }
        setTimeout(poll, 1000);
      }).catch(function () { setTimeout(poll, 2000); });
  }
  setTimeout(poll, 1000);
})();
