// An Ethereum JSON-RPC node stub that records the order in which it takes transactions.
// eth_chainId answers 1337; eth_sendRawTransaction answers 503 to the first attempt of
// every transaction whose nonce is 1 mod 4 (a node hiccup, so the sender retries it),
// and otherwise appends {from, nonce} as a line to FILE and answers the hash;
// eth_getTransactionByHash answers what was taken, or null.
// Usage: node eth-recorder.js PORT FILE
const http = require('http');
const fs = require('fs');
const { ethers } = require('ethers');

const [port, file] = process.argv.slice(2);
const taken = new Map();
const refused = new Set();
http
  .createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const call = JSON.parse(body);
      const answer = (result) =>
        res
          .writeHead(200, { 'content-type': 'application/json' })
          .end(JSON.stringify({ jsonrpc: '2.0', id: call.id, result }));
      if (call.method === 'eth_chainId') return answer('0x539');
      if (call.method === 'eth_getTransactionByHash') {
        return answer(taken.has(call.params[0]) ? { hash: call.params[0] } : null);
      }
      if (call.method !== 'eth_sendRawTransaction') {
        return res.writeHead(200).end(
          JSON.stringify({ jsonrpc: '2.0', id: call.id, error: { code: -32601, message: 'no' } }),
        );
      }
      const tx = ethers.Transaction.from(call.params[0]);
      if (tx.nonce % 4 === 1 && !refused.has(tx.hash)) {
        refused.add(tx.hash);
        return res.writeHead(503).end('busy');
      }
      if (!taken.has(tx.hash)) {
        taken.set(tx.hash, true);
        fs.appendFileSync(file, JSON.stringify({ from: tx.from.toLowerCase(), nonce: tx.nonce }) + '\n');
      }
      answer(tx.hash);
    });
  })
  .listen(port, '127.0.0.1', () => console.log('listening'));
