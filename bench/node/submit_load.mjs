// Official Fabric Gateway client (@hyperledger/fabric-gateway, pinned in tests/node) submitting CREATE_USER
// transactions to the gxsubmit emulator with a fixed concurrency; reports its own CPU (process.cpuUsage)
// per committed transaction as one JSON line on stdout. Used by bench/scenarios/official_client.py.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import crypto from 'node:crypto';
import { parseArgs } from 'node:util';

const require = createRequire(new URL('../../tests/node/package.json', import.meta.url));
const { connect, signers } = require('@hyperledger/fabric-gateway');
const grpc = require('@grpc/grpc-js');

const { values: opt } = parseArgs({
  options: {
    target: { type: 'string' }, wallet: { type: 'string' }, identity: { type: 'string', default: 'org1-partner-api' },
    msp: { type: 'string', default: 'Org1MSP' }, count: { type: 'string', default: '1000' },
    concurrency: { type: 'string', default: '64' }, warmup: { type: 'string', default: '200' },
    prefix: { type: 'string', default: 'node' },
  },
});
const count = Number(opt.count), concurrency = Number(opt.concurrency), warmup = Number(opt.warmup);
const certPem = readFileSync(`${opt.wallet}/${opt.identity}-cert`);
const key = crypto.createPrivateKey(readFileSync(`${opt.wallet}/${opt.identity}-key`));
const client = new grpc.Client(opt.target, grpc.credentials.createInsecure());
const gateway = connect({
  client, identity: { mspId: opt.msp, credentials: certPem }, signer: signers.newPrivateKeySigner(key),
});
const contract = gateway.getNetwork('gxchannel').getContract('gxtv3');
const endorsingOrganizations = ['Org1MSP', 'Org2MSP'];

function argsFor(i) {
  const id = `${opt.prefix}-${i}`;
  return [`u-${id}`, crypto.createHash('sha256').update(id).digest('hex'), 'US', '30'];
}

async function runBatch(first, n) {
  let next = first, ok = 0, bad = 0;
  async function lane() {
    while (next < first + n) {
      const i = next++;
      const commit = await contract.submitAsync('IdentityContract:CreateUser', { arguments: argsFor(i), endorsingOrganizations });
      const status = await commit.getStatus();
      if (status.successful) ok++; else bad++;
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, lane));
  return { ok, bad };
}

try {
  if (warmup > 0) await runBatch(0, warmup);
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const { ok, bad } = await runBatch(warmup, count);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  const cpuMs = (cpu.user + cpu.system) / 1000;
  console.log(JSON.stringify({
    count, ok, failed: bad, seconds, tx_per_s: ok / seconds, cpu_ms: cpuMs, cpu_ms_per_tx: ok ? cpuMs / ok : null,
    max_rss_mb: process.resourceUsage().maxRSS / 1024, node: process.version, concurrency,
  }));
} finally {
  gateway.close();
  client.close();
}
