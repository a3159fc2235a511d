# The real node app with short link timers, for link tests (a test script, not firmware).
# It boots as main.py does: frame buffers first, then the app module by module.
from citysense import frame

enc, dec = frame.Encoder(), frame.Decoder()
from citysense import preload  # noqa: E402

preload.run()
import asyncio  # noqa: E402

from citysense import app  # noqa: E402

node = app.Node(enc, dec)
node.link.rto_base = node.link.rto = 600
node.link.busy_base = node.link.busy = 400
node.link.error_backoff = 500
asyncio.run(app.main(node))
