# The real node app with short link timers, for link tests (a test script, not firmware).
import asyncio

from citysense import app, frame

enc, dec = frame.Encoder(), frame.Decoder()
node = app.Node(enc, dec)
node.link.rto_base = node.link.rto = 600
node.link.busy_base = node.link.busy = 400
node.link.error_backoff = 500
asyncio.run(app.main(node))
