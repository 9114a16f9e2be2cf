// Drives the official @hyperledger/fabric-gateway client against a running gxsubmit emulator and reports,
// step by step, what the client saw (results, commit status, events, or the error class the client raised).
//
// Usage: node emulator_check.mjs CONFIG.json  ->  JSON array on stdout, one entry per step
// CONFIG: { target, tlsCaPath?, serverName?, mspId, identities: {name: {certPath, keyPath}},
//           deadlinesMs?: {evaluate, endorse, submit, commitStatus}, steps: [...] }
// step ops: evaluate | submit (submitAsync + getStatus) | submitTransaction (blocking; CommitError) | events
//           | filteredBlocks (network.getFilteredBlockEvents: {startBlock?, count?, submit?: a submit step run once
//             the stream is open; reading stops after `count` blocks or at the block holding that submit's tx})
import { createRequire } from 'node:module';
import { createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';

const require = createRequire(import.meta.url);
const grpc = require('@grpc/grpc-js');
const fg = require('@hyperledger/fabric-gateway');

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const td = new TextDecoder();

function credentials() {
    if (!config.tlsCaPath) return grpc.credentials.createInsecure();
    return grpc.credentials.createSsl(readFileSync(config.tlsCaPath));
}

const clientOptions = config.serverName ? { 'grpc.ssl_target_name_override': config.serverName } : {};
const client = new grpc.Client(config.target, credentials(), clientOptions);
const dl = { evaluate: 5000, endorse: 15000, submit: 5000, commitStatus: 60000, ...(config.deadlinesMs || {}) };
const after = (ms) => () => ({ deadline: Date.now() + ms });

const gateways = {};
function gatewayFor(name) {
    if (!gateways[name]) {
        const id = config.identities[name];
        gateways[name] = fg.connect({
            client,
            identity: { mspId: config.mspId || 'Org1MSP', credentials: readFileSync(id.certPath) },
            signer: fg.signers.newPrivateKeySigner(createPrivateKey(readFileSync(id.keyPath))),
            hash: fg.hash.sha256,
            evaluateOptions: after(dl.evaluate),
            endorseOptions: after(dl.endorse),
            submitOptions: after(dl.submit),
            commitStatusOptions: after(dl.commitStatus),
        });
    }
    return gateways[name];
}

function describeError(err) {
    const out = {
        ok: false,
        errorClass: err?.constructor?.name ?? 'Error',
        message: String(err?.message ?? err),
    };
    for (const cls of ['GatewayError', 'EndorseError', 'SubmitError', 'CommitStatusError', 'CommitError']) {
        if (fg[cls] && err instanceof fg[cls]) out[`is${cls}`] = true;
    }
    if (err?.code !== undefined) out.code = typeof err.code === 'bigint' ? Number(err.code) : err.code;
    if (err?.transactionId) out.transactionId = err.transactionId;
    if (Array.isArray(err?.details)) {
        out.details = err.details.map((d) => ({ address: d.address, mspId: d.mspId, message: d.message }));
    }
    return out;
}

function describeFilteredBlock(block) {
    return {
        number: Number(block.getNumber()),
        channelId: block.getChannelId(),
        transactions: block.getFilteredTransactionsList().map((tx) => ({
            txId: tx.getTxid(),
            type: tx.getType(),
            code: tx.getTxValidationCode(),
            hasActions: tx.hasTransactionActions(),
            events: (tx.getTransactionActions()?.getChaincodeActionsList() ?? []).map((a) => ({
                chaincodeId: a.getChaincodeEvent()?.getChaincodeId(),
                txId: a.getChaincodeEvent()?.getTxId(),
                eventName: a.getChaincodeEvent()?.getEventName(),
            })),
        })),
    };
}

async function filteredBlocks(network, step) {
    const options = {};
    if (step.startBlock !== undefined) options.startBlock = BigInt(step.startBlock);
    const blocks = await network.getFilteredBlockEvents(options);
    const seen = [];
    let submitted;
    const timer = setTimeout(() => blocks.close(), step.timeoutMs || 10000);
    try {
        if (step.submit) submitted = { name: step.submit.name, ...(await runStep(step.submit)) };
        const want = submitted?.transactionId;
        for await (const block of blocks) {
            const b = describeFilteredBlock(block);
            seen.push(b);
            if (want ? b.transactions.some((tx) => tx.txId === want) : seen.length >= (step.count || 1)) break;
        }
    } catch (err) {
        return { ...describeError(err), blocks: seen, submitted };
    } finally {
        clearTimeout(timer);
        blocks.close();
    }
    return { ok: true, blocks: seen, submitted };
}

async function runStep(step) {
    const gw = gatewayFor(step.identity || 'org1-partner-api');
    const network = gw.getNetwork(step.channel || 'gxchannel');
    const contract = network.getContract(step.chaincode || 'gxtv3', step.contract);
    const opts = { arguments: step.args || [] };
    if (step.endorsingOrganizations) opts.endorsingOrganizations = step.endorsingOrganizations;
    switch (step.op) {
        case 'evaluate': {
            const result = await contract.evaluate(step.fn, opts);
            return { ok: true, result: td.decode(result) };
        }
        case 'submit': {
            const commit = await contract.submitAsync(step.fn, opts);
            const txId = commit.getTransactionId();
            const result = td.decode(commit.getResult());
            let status;
            try {
                status = await commit.getStatus();
            } catch (err) {
                return { ...describeError(err), stage: 'commitStatus', transactionId: txId, result };
            }
            return {
                ok: true,
                transactionId: txId,
                result,
                blockNumber: Number(status.blockNumber),
                code: status.code,
                successful: status.successful,
            };
        }
        case 'submitTransaction': {
            const result = await contract.submitTransaction(step.fn, ...(step.args || []));
            return { ok: true, result: td.decode(result) };
        }
        case 'events': {
            const options = {};
            if (step.startBlock !== undefined) options.startBlock = BigInt(step.startBlock);
            if (step.afterTx) {
                options.checkpoint = {
                    getBlockNumber: () => BigInt(step.afterTx.blockNumber),
                    getTransactionId: () => step.afterTx.transactionId,
                };
            }
            const events = await network.getChaincodeEvents(step.chaincode || 'gxtv3', options);
            const seen = [];
            const timer = setTimeout(() => events.close(), step.timeoutMs || 10000);
            try {
                for await (const ev of events) {
                    seen.push({
                        blockNumber: Number(ev.blockNumber),
                        transactionId: ev.transactionId,
                        eventName: ev.eventName,
                        payload: td.decode(ev.payload),
                    });
                    if (seen.length >= (step.count || 1)) break;
                }
            } catch (err) {
                if (seen.length < (step.count || 1) && !String(err?.message).includes('Cancelled')) {
                    return { ...describeError(err), events: seen };
                }
            } finally {
                clearTimeout(timer);
                events.close();
            }
            return { ok: true, events: seen };
        }
        case 'filteredBlocks':
            return filteredBlocks(network, step);
        default:
            throw new Error(`unknown op ${step.op}`);
    }
}

const results = [];
for (const step of config.steps) {
    try {
        results.push({ name: step.name, ...(await runStep(step)) });
    } catch (err) {
        results.push({ name: step.name, ...describeError(err) });
    }
}
for (const gw of Object.values(gateways)) gw.close();
client.close();
process.stdout.write(JSON.stringify(results) + '\n');
