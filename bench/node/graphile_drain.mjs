// graphile-worker draining N no-op jobs (bench/scenarios/queue.py). Jobs are added in bulk first (not timed);
// the drain is timed until the last job ran. Prints one JSON line.
import { parseArgs } from 'node:util';
import { run, makeWorkerUtils, Logger } from 'graphile-worker';

const logger = new Logger(() => () => {}); // per-job INFO lines would cost more than the jobs

const { values: opt } = parseArgs({
  options: {
    url: { type: 'string' }, schema: { type: 'string' }, jobs: { type: 'string', default: '5000' },
    concurrency: { type: 'string', default: '10' }, batch: { type: 'string', default: '100' },
  },
});
const jobs = Number(opt.jobs), concurrency = Number(opt.concurrency), batch = Number(opt.batch);
const preset = {
  worker: {
    connectionString: opt.url, schema: opt.schema, concurrentJobs: concurrency, maxPoolSize: concurrency + 2,
    pollInterval: 100, localQueue: { size: batch }, completeJobBatchDelay: 1, failJobBatchDelay: 1,
  },
};
const utils = await makeWorkerUtils({ preset, logger });
await utils.migrate();
for (let i = 0; i < jobs; i += 1000) {
  const n = Math.min(1000, jobs - i);
  await utils.addJobs(Array.from({ length: n }, () => ({ identifier: 'noop', payload: {} })));
}
await utils.release();
let done = 0, t0 = 0n, finish;
const finished = new Promise((resolve) => { finish = resolve; });
t0 = process.hrtime.bigint();
const runner = await run({
  preset, logger, noHandleSignals: true,
  taskList: { noop: async () => { done++; if (done >= jobs) finish(); } },
});
await finished;
const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
await runner.stop();
const cpu = process.cpuUsage();
console.log(JSON.stringify({
  system: 'graphile-worker', done, jobs, seconds, jobs_per_s: done / seconds,
  cpu_s_total: (cpu.user + cpu.system) / 1e6,
  settings: `concurrentJobs ${concurrency}, localQueue.size ${batch}, completeJobBatchDelay 1 ms`,
}));
