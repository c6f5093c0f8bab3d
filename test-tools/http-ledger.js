// A generic HTTP ledger node for the tests: GET /health answers 200; POST /transactions
// takes a JSON {id, envelope}, appends it as one line to the file named on the command
// line and answers 201, or 409 when that id came before.
// Usage: node http-ledger.js PORT FILE [CERT.pem KEY.pem]; with a certificate, HTTPS.
const http = require('http');
const https = require('https');
const fs = require('fs');

const [port, file, cert, key] = process.argv.slice(2);
const seen = new Set();
const serve = (handler) =>
  cert ? https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, handler)
       : http.createServer(handler);
serve((req, res) => {
  if (req.method === 'GET' && req.url === '/health') {
    res.writeHead(200).end('ok');
    return;
  }
  if (req.method !== 'POST' || req.url !== '/transactions') {
    res.writeHead(404).end();
    return;
  }
  let body = '';
  req.on('data', (c) => (body += c));
  req.on('end', () => {
    let tx;
    try {
      tx = JSON.parse(body);
    } catch (e) {
      res.writeHead(400).end('not JSON');
      return;
    }
    if (seen.has(tx.id)) {
      res.writeHead(409).end('already have ' + tx.id);
      return;
    }
    seen.add(tx.id);
    fs.appendFileSync(file, JSON.stringify(tx) + '\n');
    res.writeHead(201, { 'content-type': 'application/json' }).end(JSON.stringify({ accepted: tx.id }));
  });
})
  .listen(Number(port), '127.0.0.1', () => console.log('listening'));
