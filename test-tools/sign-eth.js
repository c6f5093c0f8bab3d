// Signs Ethereum transactions with ethers.js, an implementation independent of the
// gateway. stdin: [{key, chainId, nonce, type, to, value?, data?}] (type 0, 1 or 2);
// stdout: [{raw, hash, from}] in the same order.
const { ethers } = require('ethers');

async function main() {
  const specs = JSON.parse(require('fs').readFileSync(0, 'utf8'));
  const wallets = new Map();
  const out = [];
  for (const s of specs) {
    if (!wallets.has(s.key)) wallets.set(s.key, new ethers.Wallet(s.key));
    const w = wallets.get(s.key);
    const tx = {
      type: s.type,
      chainId: s.chainId,
      nonce: s.nonce,
      to: s.to,
      value: BigInt(s.value || 0),
      data: s.data || '0x',
      gasLimit: 30000n,
    };
    if (s.type === 2) {
      tx.maxFeePerGas = 100n * 10n ** 9n;
      tx.maxPriorityFeePerGas = 10n ** 9n;
    } else {
      tx.gasPrice = 100n * 10n ** 9n;
    }
    if (s.type === 1) tx.accessList = [{ address: s.to, storageKeys: [ethers.ZeroHash] }];
    const raw = await w.signTransaction(tx);
    out.push({ raw, hash: ethers.keccak256(raw), from: w.address });
  }
  process.stdout.write(JSON.stringify(out));
}
main().catch((e) => { console.error(e); process.exit(1); });
