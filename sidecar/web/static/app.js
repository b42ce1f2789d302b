/* The pages' one script (sidecar/web): no build step, no inline script anywhere (the
   Content-Security-Policy refuses them).
   1. CSRF: every htmx request that is not a GET carries the page's token in X-CSRF-Token
      (plain forms carry it in their hidden csrf_token field).
   2. Live updates: a page whose <body> has data-live (e.g. data-live="study report") listens to
      GET /api/events (Server-Sent Events) and turns each event of kind K into the htmx event
      "live-K" on <body>; its fragments refresh with hx-trigger="live-study from:body". An
      `event: reset` (the stream lost track) fires every kind. #live-status tells screen
      readers whether updates are on.
   3. Refusals htmx does not show: an htmx request answered with an error status (the session
      ended, a stale page, a server fault) or not answered at all swaps nothing, so the
      #request-alert region (aria-live="assertive": read out at once) says that nothing was saved; what the user typed stays in the page
      (the server never reloads a page for a refused POST). */
(function () {
  'use strict';

  var KINDS = ['study', 'order', 'report', 'finding'];
  var RETRY_MS = 5000;

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute('content') : '';
  }

  document.addEventListener('htmx:configRequest', function (event) {
    var verb = (event.detail.verb || '').toLowerCase();
    if (verb !== 'get') {
      event.detail.headers['X-CSRF-Token'] = csrfToken();
    }
  });

  var REFUSALS = {
    401: 'Your session has ended, so nothing was saved. What you typed is still on this page: ' +
      'copy what you need, then reload the page to log in again.',
    403: 'This was refused (403), so nothing was saved. The page may be out of date: copy what ' +
      'you typed, then reload the page.',
    404: 'Not found (404): nothing was saved. The record may have been removed; reload the page.'
  };

  function requestAlert(text) {
    var region = document.getElementById('request-alert');
    if (!region) return;
    region.textContent = text;
    region.hidden = !text;
  }

  document.addEventListener('htmx:responseError', function (event) {
    var status = event.detail.xhr ? event.detail.xhr.status : 0;
    requestAlert(REFUSALS[status] ||
      'The server answered ' + status + ', so nothing was saved. What you typed is still on ' +
      'this page; try again, or reload the page.');
  });

  document.addEventListener('htmx:sendError', function () {
    requestAlert('The server could not be reached, so nothing was saved. What you typed is ' +
      'still on this page; try again in a moment.');
  });

  document.addEventListener('htmx:afterRequest', function (event) {
    if (event.detail.successful) requestAlert('');
  });

  function setStatus(text) {
    var status = document.getElementById('live-status');
    if (status && status.textContent !== text) status.textContent = text;
  }

  function fire(kind, detail) {
    if (window.htmx) window.htmx.trigger(document.body, 'live-' + kind, detail);
  }

  function startLive() {
    if (!document.body || !document.body.dataset.live || !window.EventSource) return;
    var lastId = '';
    var source = null;

    function connect() {
      var url = '/api/events';
      // A new EventSource does not send Last-Event-ID: the query says where to resume.
      if (lastId) url += '?lastEventId=' + encodeURIComponent(lastId);
      source = new EventSource(url);
      source.onopen = function () { setStatus('Live updates on'); };
      source.onerror = function () {
        setStatus('Reconnecting…');
        // The browser reconnects by itself unless the stream was refused (closed): then again
        // here, after a pause, from the last event seen.
        if (source.readyState === EventSource.CLOSED) {
          window.setTimeout(connect, RETRY_MS);
        }
      };
      KINDS.forEach(function (kind) {
        source.addEventListener(kind, function (message) {
          if (message.lastEventId) lastId = message.lastEventId;
          var detail = {};
          try { detail = JSON.parse(message.data); } catch (ignored) { detail = {}; }
          fire(kind, detail);
        });
      });
      source.addEventListener('reset', function (message) {
        if (message.lastEventId) lastId = message.lastEventId;
        KINDS.forEach(function (kind) { fire(kind, { reset: true }); });
      });
    }

    connect();
    window.addEventListener('pagehide', function () { if (source) source.close(); });
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', startLive);
  } else {
    startLive();
  }
}());
