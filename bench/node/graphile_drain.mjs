// graphile-worker draining N no-op jobs per configuration (bench/scenarios/queue.py). For each configuration
// in --configs (JSON list of {concurrency, queue, delay}) a fresh schema is migrated and N jobs are added in
// bulk (not timed); the drain is timed until the last job ran. The best configuration is then run twice more
// and the mean of those confirmation runs is the reported rate. Prints one JSON line.
import { parseArgs } from 'node:util';
import { run, makeWorkerUtils, Logger } from 'graphile-worker';

const logger = new Logger(() => () => {}); // per-job INFO lines would cost more than the jobs

const { values: opt } = parseArgs({
  options: {
    url: { type: 'string' }, schema: { type: 'string' }, jobs: { type: 'string', default: '5000' },
    configs: { type: 'string', default: '[{"concurrency":24,"queue":500,"delay":0}]' },
  },
});
const jobs = Number(opt.jobs);
const configs = JSON.parse(opt.configs);

function describe(c) {
  return `concurrentJobs ${c.concurrency}, maxPoolSize ${c.concurrency + 1}, localQueue.size ${c.queue}, `
    + `completeJobBatchDelay ${c.delay} ms`;
}

async function trial(c, schema) {
  const preset = {
    worker: {
      connectionString: opt.url, schema, concurrentJobs: c.concurrency, maxPoolSize: c.concurrency + 1,
      pollInterval: 100, localQueue: { size: c.queue }, completeJobBatchDelay: c.delay,
      failJobBatchDelay: c.delay,
    },
  };
  const utils = await makeWorkerUtils({ preset, logger });
  await utils.migrate();
  for (let i = 0; i < jobs; i += 1000) {
    const n = Math.min(1000, jobs - i);
    await utils.addJobs(Array.from({ length: n }, () => ({ identifier: 'noop', payload: {} })));
  }
  let done = 0, finish;
  const finished = new Promise((resolve) => { finish = resolve; });
  const t0 = process.hrtime.bigint();
  const runner = await run({
    preset, logger, noHandleSignals: true,
    taskList: { noop: async () => { done++; if (done >= jobs) finish(); } },
  });
  await finished;
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  await runner.stop();
  await utils.withPgClient((client) => client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`));
  await utils.release();
  return { done, seconds, jobs_per_s: done / seconds, settings: describe(c), params: c };
}

const trials = [];
for (let i = 0; i < configs.length; i++) trials.push(await trial(configs[i], `${opt.schema}_${i}`));
const best = trials.reduce((a, b) => (b.jobs_per_s > a.jobs_per_s ? b : a));
const confirm = [];
for (let k = 0; k < 2; k++) confirm.push(await trial(best.params, `${opt.schema}_c${k}`));
const cpu = process.cpuUsage();
console.log(JSON.stringify({
  system: 'graphile-worker', jobs, done: confirm.reduce((a, c) => a + c.done, 0),
  seconds: confirm.reduce((a, c) => a + c.seconds, 0),
  jobs_per_s: confirm.reduce((a, c) => a + c.jobs_per_s, 0) / confirm.length,
  confirm_jobs_per_s: confirm.map((c) => Math.round(c.jobs_per_s * 10) / 10),
  settings: best.settings, params: best.params, sweep_best_jobs_per_s: best.jobs_per_s,
  trials: trials.map((t) => ({ settings: t.settings, jobs_per_s: Math.round(t.jobs_per_s * 10) / 10 })),
  cpu_s_total: (cpu.user + cpu.system) / 1e6,
}));
