// The tenant's page: a tenant token (from the URL fragment or typed in)
// opens a read-only MQTT subscription to the tenant's retained
// remote-support indicator and command feed; every message redraws the
// page. A token with the end right may end a live session through the
// API, sent as Authorization: Bearer (never a cookie, so no other page can
// make the browser send it). A token with the approve right approves or
// denies the activations waiting for the tenant, the same way; the
// waiting ones are read from the API every second.
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var fmt = function (s) { return s ? new Date(s).toLocaleString() : "—"; };
  var time = function (s) { return s ? new Date(s).toLocaleTimeString() : "—"; };

  var token = "";
  var info = null;
  var status = null;
  var feed = [];
  var names = {};

  function cells(tr, values) {
    values.forEach(function (v) {
      var td = document.createElement("td");
      td.textContent = v;
      tr.appendChild(td);
    });
  }

  function can(right) { return !!info && (info.rights || []).indexOf(right) >= 0; }

  // The banner says only what is known: connecting until the retained
  // status has arrived (or again once the connection is lost), then idle
  // or ACTIVE.
  function unknown(why) {
    status = null;
    $("indicator").className = "unknown";
    $("state").textContent = "connecting…";
    $("detail").textContent = why || "";
  }

  function render() {
    if (!status) { return; }
    var st = status;
    $("indicator").className = st.active ? "active" : "idle";
    $("state").textContent = st.active ? "ACTIVE" : "idle";
    $("detail").textContent = st.active
      ? st.sessions.length + " remote-support session(s) in progress"
      : "No one is connected to your systems.";
    (st.today || []).concat(st.sessions || []).forEach(function (s) {
      if (s.agent_name) { names[s.agent_id] = s.agent_name; }
    });
    var end = can("end");
    document.querySelectorAll("#live .end-col").forEach(function (th) { th.hidden = !end; });
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
      if (end) {
        var td = document.createElement("td");
        var b = document.createElement("button");
        b.className = "danger end";
        b.textContent = "End this session now";
        b.addEventListener("click", function () { confirmEnd(s); });
        td.appendChild(b);
        tr.appendChild(td);
      }
      live.appendChild(tr);
    });
    var today = $("today").tBodies[0];
    today.replaceChildren();
    (st.today || []).forEach(function (s) {
      var tr = document.createElement("tr");
      tr.dataset.session = s.session_id;
      cells(tr, [s.agent_name || s.agent_id, s.operator, fmt(s.since), s.ended_at ? fmt(s.ended_at) : "live", s.end_reason || ""]);
      var td = document.createElement("td");
      var link = document.createElement("a");
      link.href = "#";
      link.className = "transcript";
      link.textContent = "Download";
      link.addEventListener("click", function (ev) { ev.preventDefault(); downloadTranscript(s.session_id, link); });
      td.appendChild(link);
      tr.appendChild(td);
      today.appendChild(tr);
    });
    renderFeed();
  }

  // A transcript is fetched with the token in the Authorization header
  // (a plain link would need it in the address), then saved from memory.
  function downloadTranscript(id, link) {
    link.textContent = "downloading…";
    fetch("/v1/viewer/sessions/" + encodeURIComponent(id) + "/transcript", {
      credentials: "omit", headers: { Authorization: "Bearer " + token }
    }).then(function (r) {
      if (!r.ok) {
        return r.json().then(function (body) { throw new Error((body.error && body.error.message) || "refused"); });
      }
      return r.blob();
    }).then(function (blob) {
      var a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = "transcript-" + id + ".json";
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(function () { URL.revokeObjectURL(a.href); }, 60000);
      link.textContent = "Download";
      link.dataset.downloaded = "1";
    }).catch(function (e) {
      link.textContent = "Download";
      notice("The transcript could not be downloaded: " + e.message);
    });
  }

  var approvals = [];
  function since(ms) {
    var s = Math.floor(ms / 1000);
    return Math.floor(s / 60) + ":" + ("0" + (s % 60)).slice(-2);
  }
  function renderApprovals() {
    $("approvals-section").hidden = approvals.length === 0;
    var approve = can("approve");
    document.querySelectorAll("#approvals .approve-col").forEach(function (th) { th.hidden = !approve; });
    var body = $("approvals").tBodies[0];
    body.replaceChildren();
    approvals.forEach(function (a) {
      var tr = document.createElement("tr");
      tr.dataset.session = a.id;
      cells(tr, [a.operator, a.agent_name || a.agent_id, a.reason, a.ttl, fmt(a.requested_at), since(a.elapsed_ms)]);
      tr.children[2].className = "what";
      if (approve) {
        var td = document.createElement("td");
        td.className = "buttons";
        [["Approve", "approve"], ["Deny", "danger deny"]].forEach(function (b) {
          var btn = document.createElement("button");
          btn.textContent = b[0];
          btn.className = b[1];
          btn.addEventListener("click", function () {
            if (b[0] === "Approve") { confirmApproval(a); } else { decide(a, false); }
          });
          td.appendChild(btn);
        });
        tr.appendChild(td);
      }
      body.appendChild(tr);
    });
  }
  // Approving lets someone in: it is confirmed, with what it grants.
  var approving = null;
  function confirmApproval(a) {
    approving = a;
    $("confirm-approval-text").textContent = "Let " + a.operator + " into " + (a.agent_name || a.agent_id) +
      " for " + a.ttl + "? Reason given: " + a.reason;
    $("confirm-approval").showModal();
  }
  $("confirm-approval").addEventListener("close", function () {
    var a = approving;
    approving = null;
    if (a && $("confirm-approval").returnValue === "approve") { decide(a, true); }
  });
  function decide(a, approve) {
    notice(approve ? "Approving…" : "Denying…");
    fetch("/v1/viewer/sessions/" + encodeURIComponent(a.id) + (approve ? "/approve" : "/deny"), {
      method: "POST", credentials: "omit", headers: { Authorization: "Bearer " + token }
    }).then(function (r) {
      return r.json().then(function (body) {
        if (!r.ok) { throw new Error((body.error && body.error.message) || "refused"); }
        notice(approve ? "Approved: the session of " + a.operator + " on " + (a.agent_name || a.agent_id) + " opens now."
          : "Denied: " + a.operator + " gets no session on " + (a.agent_name || a.agent_id) + ".");
        pollApprovals();
      });
    }).catch(function (e) { notice("Not decided: " + e.message); });
  }
  var polling = null;
  function pollApprovals() {
    fetch("/v1/viewer/approvals", { credentials: "omit", headers: { Authorization: "Bearer " + token } })
      .then(function (r) {
        if (r.status === 401) {
          // Revoked (or unknown): asking again changes nothing.
          clearInterval(polling);
          approvals = [];
          notice("The tenant token was refused; reopen the page with a valid token.");
        }
        return r.ok ? r.json() : { approvals: approvals };
      })
      .then(function (v) { approvals = v.approvals || []; renderApprovals(); })
      .catch(function () { /* kept as last seen; the next poll tries again */ });
  }

  function renderFeed() {
    var body = $("feed").tBodies[0];
    body.replaceChildren();
    feed.forEach(function (e) {
      var tr = document.createElement("tr");
      tr.dataset.command = e.command_id;
      cells(tr, [time(e.completed_at), names[e.agent_id] || e.agent_id, e.operator, e.command, e.summary || "",
        e.outcome + (e.code ? " (" + e.code + ")" : "")]);
      tr.children[4].className = "what";
      body.appendChild(tr);
    });
  }

  function notice(text) {
    $("notice").textContent = text;
    $("notice").hidden = !text;
  }

  var pending = null;
  function confirmEnd(s) {
    pending = s;
    $("confirm-text").textContent = "End the session of " + s.operator + " on " + (s.agent_name || s.agent_id) +
      "? The operator loses access at once; the agent goes dormant.";
    $("confirm").showModal();
  }
  $("confirm").addEventListener("close", function () {
    var s = pending;
    pending = null;
    if (!s || $("confirm").returnValue !== "end") { return; }
    notice("Ending the session…");
    fetch("/v1/viewer/sessions/" + encodeURIComponent(s.session_id) + "/end", {
      method: "POST", credentials: "omit", headers: { Authorization: "Bearer " + token }
    }).then(function (r) {
      return r.json().then(function (body) {
        if (!r.ok) { throw new Error((body.error && body.error.message) || "refused"); }
        notice("Session ended.");
      });
    }).catch(function (e) { notice("The session was not ended: " + e.message); });
  });

  function watch(tok) {
    token = tok;
    fetch("/v1/viewer", { credentials: "omit", headers: { Authorization: "Bearer " + token } })
      .then(function (r) {
        if (!r.ok) { throw new Error("the tenant token was refused"); }
        return r.json();
      })
      .then(function (v) {
        info = v;
        $("tenant").textContent = v.tenant;
        pollApprovals();
        if (!polling) { polling = setInterval(pollApprovals, 1000); }
        var client = mqtt.connect(v.mqtt_url, {
          username: v.mqtt_username, password: token, protocolVersion: 5, clean: true,
          clientId: "viewer-" + v.tenant_id + "-page-" + Math.random().toString(16).slice(2, 12), reconnectPeriod: 2000
        });
        client.on("connect", function () {
          $("conn").textContent = "connected, waiting for the status…";
          client.subscribe([v.topic, v.feed_topic], { qos: 1 });
        });
        client.on("message", function (topic, payload) {
          var msg;
          try { msg = JSON.parse(payload.toString()); } catch (e) { return; }
          if (topic === v.feed_topic) {
            feed = Array.isArray(msg.entries) ? msg.entries : [];
            renderFeed();
            return;
          }
          if (topic === v.topic) {
            status = msg;
            render();
            $("conn").textContent = "connected, live";
          }
        });
        client.on("close", function () {
          unknown("Reconnecting to the live status…");
          $("conn").textContent = "disconnected, retrying…";
        });
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
    $("state").textContent = "paste a tenant token";
    $("conn").textContent = "";
  }
  $("login").addEventListener("submit", function (ev) {
    ev.preventDefault();
    $("login").hidden = true;
    unknown("");
    watch($("token").value.trim());
  });
})();
