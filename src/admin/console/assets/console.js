// imcrypt web console: the little JavaScript it has. The pages work without it for reading;
// it refreshes the overview (picture, status, alarms), and reads a public key file into the
// form.
'use strict';

document.addEventListener('DOMContentLoaded', () => {
  const live = document.getElementById('live');
  if (live) {
    const refresh = async () => {
      try {
        const r = await fetch('/ui/live', { credentials: 'same-origin', cache: 'no-store' });
        if (r.ok) {
          live.innerHTML = await r.text();
          live.dataset.refreshed = String(Date.now());
        } else if (r.status === 401) {
          window.location.assign('/ui/login');
        }
      } catch (_) {
        // The daemon is away for a moment: keep the last picture.
      }
    };
    window.setInterval(refresh, 2000);
  }

  const file = document.getElementById('public-key-file');
  const pem = document.getElementById('public-key-pem');
  if (file && pem) {
    file.addEventListener('change', async () => {
      const f = file.files && file.files[0];
      if (f) {
        pem.value = await f.text();
      }
    });
  }
});
