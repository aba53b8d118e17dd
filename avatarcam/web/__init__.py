"""FaceMimic in the browser: `python run.py --serve` serves a page where each visitor's webcam drives an avatar.

server.py is the aiohttp + aiortc server (routes, token, HTTPS, client limit); session.py is one browser's session
(its own landmarker, reenactor, avatar, neutral pose and settings on its own thread, latest-wins in and out);
library.py is the shared avatar library (thumbnails, loaded avatars, uploads); tls.py makes the self-signed
certificate; static/ is the page (plain HTML/JS, no build step). aiortc and aiohttp are imported only here.
"""
