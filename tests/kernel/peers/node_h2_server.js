// A Node.js `http2` cleartext (h2c) server for the kernel tests: it writes
// its SETTINGS frame as soon as a connection is accepted, before it reads
// the client's preface.  Prints its port; serves until stdin closes.
//   GET /missing -> 404, any other path -> 200 "hello <path>"
const http2 = require('http2');

const server = http2.createServer();
server.on('stream', (stream, headers) => {
  const path = headers[':path'];
  if (path === '/missing') {
    stream.respond({ ':status': 404 });
    stream.end('not found\n');
    return;
  }
  stream.respond({ ':status': 200, 'content-type': 'text/plain' });
  stream.end(`hello ${path}\n`);
});
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${server.address().port}\n`);
});
process.stdin.on('end', () => {
  server.close();
  process.exit(0);
});
process.stdin.resume();
