// The tenant's live indicator: a viewer token (from the URL fragment or
// typed in) opens a read-only MQTT subscription to the tenant's retained
// remote-support topic; every message redraws the page.
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var fmt = function (s) { return s ? new Date(s).toLocaleString() : "—"; };

  function cells(tr, values) {
    values.forEach(function (v) {
      var td = document.createElement("td");
      td.textContent = v;
      tr.appendChild(td);
    });
  }

  function render(st) {
    var ind = $("indicator");
    ind.className = st.active ? "active" : "idle";
    $("state").textContent = st.active ? "ACTIVE" : "idle";
    $("detail").textContent = st.active
      ? st.sessions.length + " remote-support session(s) in progress"
      : "No one is connected to your systems.";
    var live = $("live").tBodies[0];
    live.replaceChildren();
    (st.sessions || []).forEach(function (s) {
      var tr = document.createElement("tr");
      tr.dataset.session = s.session_id;
      var agent = s.agent_name || s.agent_id;
      if (s.agent_stale) {
        agent += " (not responding)";
        tr.classList.add("stale");
      }
      cells(tr, [agent, s.operator, fmt(s.since), fmt(s.expires_at)]);
      live.appendChild(tr);
    });
    var today = $("today").tBodies[0];
    today.replaceChildren();
    (st.today || []).forEach(function (s) {
      var tr = document.createElement("tr");
      cells(tr, [s.agent_name || s.agent_id, s.operator, fmt(s.since), s.ended_at ? fmt(s.ended_at) : "live", s.end_reason || ""]);
      today.appendChild(tr);
    });
  }

  function watch(token) {
    fetch("/v1/viewer", { headers: { Authorization: "Bearer " + token } })
      .then(function (r) {
        if (!r.ok) { throw new Error("the viewer token was refused"); }
        return r.json();
      })
      .then(function (v) {
        $("tenant").textContent = v.tenant;
        var client = mqtt.connect(v.mqtt_url, {
          username: v.mqtt_username, password: token, protocolVersion: 5, clean: true,
          clientId: "viewer-" + v.tenant_id + "-page-" + Math.random().toString(16).slice(2, 12), reconnectPeriod: 2000
        });
        client.on("connect", function () {
          $("conn").textContent = "connected, live";
          client.subscribe(v.topic, { qos: 1 });
        });
        client.on("message", function (topic, payload) {
          try { render(JSON.parse(payload.toString())); } catch (e) { /* ignore a bad message */ }
        });
        client.on("close", function () { $("conn").textContent = "disconnected, retrying…"; });
        client.on("error", function (e) { $("conn").textContent = "error: " + e.message; });
      })
      .catch(function (e) {
        $("state").textContent = "not connected";
        $("conn").textContent = e.message;
        $("login").hidden = false;
      });
  }

  var m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  // The token is read from the fragment (never sent in a request line) and
  // then cleared from the address bar.
  if (m) {
    history.replaceState(null, "", location.pathname);
    watch(decodeURIComponent(m[1]));
  } else {
    $("login").hidden = false;
    $("state").textContent = "paste a viewer token";
  }
  $("login").addEventListener("submit", function (ev) {
    ev.preventDefault();
    $("login").hidden = true;
    watch($("token").value.trim());
  });
})();
