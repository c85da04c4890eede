// lbfleet dashboard: live updates over Server-Sent Events, plus confirmations. No framework, no build step.
// The server says "changed" after every committed fleet change; the page re-fetches itself and swaps the
// contents of its [data-live] regions (matched by id), leaving forms that someone is typing in alone.
(function () {
  'use strict';

  var status = document.getElementById('live-status');
  function setStatus(text, state) {
    if (status) {
      status.textContent = text;
      status.setAttribute('data-state', state);
    }
  }

  var inflight = false;
  var again = false;
  var refreshes = 0;

  function busyIn(el) {
    var a = document.activeElement;
    return a && a !== document.body && el.contains(a) &&
      (a.tagName === 'INPUT' || a.tagName === 'SELECT' || a.tagName === 'TEXTAREA');
  }

  function refresh() {
    if (inflight) { again = true; return; }
    inflight = true;
    fetch(window.location.href, {
      credentials: 'same-origin',
      headers: { 'X-Lbfleet-Live': '1' },
      cache: 'no-store'
    }).then(function (resp) {
      if (!resp.ok || resp.redirected) { throw new Error('refresh answered ' + resp.status); }
      return resp.text();
    }).then(function (html) {
      var doc = new DOMParser().parseFromString(html, 'text/html');
      var regions = document.querySelectorAll('[data-live]');
      for (var i = 0; i < regions.length; i++) {
        var el = regions[i];
        var fresh = el.id ? doc.getElementById(el.id) : null;
        if (!fresh || busyIn(el)) { continue; }
        if (el.innerHTML === fresh.innerHTML) { continue; }
        // Keep what the reader opened (a diff, the role document) open across the swap.
        var open = [];
        el.querySelectorAll('details[open][id]').forEach(function (d) { open.push(d.id); });
        el.innerHTML = fresh.innerHTML;
        open.forEach(function (id) {
          var d = document.getElementById(id);
          if (d) { d.open = true; }
        });
      }
      refreshes += 1;
      document.body.setAttribute('data-refreshes', String(refreshes));
    }).catch(function () {
      setStatus('○ refresh failed', 'off');
    }).then(function () {
      inflight = false;
      if (again) { again = false; refresh(); }
    });
  }

  if (window.EventSource && document.querySelector('[data-live]')) {
    var lost = false;
    var es = new EventSource('/live');
    // `hello` carries the fleet's change counter. If it moved since the server rendered this page (a change
    // landed before the stream connected), or the stream was down for a while, catch up now.
    es.addEventListener('hello', function (e) {
      setStatus('● live', 'on');
      if (lost || e.data !== document.body.getAttribute('data-fleet-seq')) { lost = false; refresh(); }
    });
    es.addEventListener('changed', function () { refresh(); });
    es.onerror = function () {
      lost = true;
      setStatus('○ reconnecting', 'off');
    };
    window.addEventListener('pagehide', function () { es.close(); });
  } else if (status) {
    // Pages without live parts (users, forms) do not follow the fleet; say nothing rather than "not live".
    status.hidden = true;
  }

  // The import page: a file input with data-into="ID" loads the main file's text into that text box and its
  // name into data-name's field; the other chosen files (the included ones) go as JSON [{name, text}] into
  // data-extra's hidden field and are listed in data-list. For a directory, names are relative to it and its
  // keepalived.conf (else the first file) is the main one.
  document.addEventListener('change', function (e) {
    var t = e.target;
    var into = t && t.getAttribute && t.getAttribute('data-into');
    if (!into || !t.files || !t.files.length) { return; }
    var files = Array.prototype.slice.call(t.files);
    var named = files.map(function (f) {
      var path = f.webkitRelativePath || f.name;
      if (f.webkitRelativePath) { path = path.split('/').slice(1).join('/'); }
      return { file: f, name: path };
    });
    var main = 0;
    if (t.hasAttribute('webkitdirectory')) {
      named.sort(function (a, b) { return a.name < b.name ? -1 : a.name > b.name ? 1 : 0; });
      main = 0;
      named.forEach(function (n, i) { if (n.name === 'keepalived.conf') { main = i; } });
    }
    var texts = new Array(named.length);
    var left = named.length;
    named.forEach(function (n, i) {
      var reader = new FileReader();
      reader.onload = function () {
        texts[i] = String(reader.result);
        left -= 1;
        if (left > 0) { return; }
        var box = document.getElementById(into);
        var nameField = document.getElementById(t.getAttribute('data-name'));
        var extraField = document.getElementById(t.getAttribute('data-extra'));
        var list = document.getElementById(t.getAttribute('data-list'));
        if (box) { box.value = texts[main]; }
        if (nameField) { nameField.value = named[main].name; }
        var extra = [];
        named.forEach(function (m, j) { if (j !== main) { extra.push({ name: m.name, text: texts[j] }); } });
        if (extraField) { extraField.value = JSON.stringify(extra); }
        if (list) {
          while (list.firstChild) { list.removeChild(list.firstChild); }
          extra.forEach(function (x) {
            var li = document.createElement('li');
            li.textContent = x.name;
            list.appendChild(li);
          });
        }
      };
      reader.readAsText(n.file);
    });
  });

  document.addEventListener('submit', function (e) {
    var msg = e.target && e.target.getAttribute && e.target.getAttribute('data-confirm');
    if (msg && !window.confirm(msg)) { e.preventDefault(); }
  });
})();
