// Node.js https peer over OpenSSL memory BIOs (Node's TLSWrap).
//   node node_https.js server PORT CERT KEY    prints "ready" once listening
//   node node_https.js client URL COUNT CACERT TRACEPARENT_PREFIX [warm]
//     waits for a line on stdin, then sends COUNT GETs one after another,
//     request i with traceparent PREFIX + (i as 16 hex digits) + "-01";
//     prints each status, then "done".  With "warm", it first sends one GET
//     (printing "warm") on the keep-alive connection the others reuse.
'use strict';
const fs = require('fs');
const https = require('https');
const readline = require('readline');

const [mode, ...args] = process.argv.slice(2);

if (mode === 'server') {
  const [port, cert, key] = args;
  const server = https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) },
    (req, res) => {
      res.writeHead(req.url.startsWith('/missing') ? 404 : 200, { 'content-type': 'text/plain' });
      res.end('ok ' + req.url + '\n');
    });
  server.keepAliveTimeout = 60000;  // a warm connection outlives an agent's start
  server.listen(Number(port), '127.0.0.1', () => console.log('ready'));
} else if (mode === 'client') {
  const [url, count, cacert, prefix, warm] = args;
  const ca = fs.readFileSync(cacert);
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
  const get = (i) => new Promise((resolve, reject) => {
    const parent = i.toString(16).padStart(16, '0');
    https.get(url, { ca, agent, headers: { traceparent: `${prefix}${parent}-01` } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    }).on('error', reject);
  });
  const warmed = warm === 'warm' ? get(0).then(() => console.log('warm')) : Promise.resolve();
  readline.createInterface({ input: process.stdin }).once('line', async () => {
    await warmed;
    for (let i = 1; i <= Number(count); i++) console.log(await get(i));
    console.log('done');
    process.exit(0);
  });
}
