// Drives the official @hyperledger/fabric-gateway client offline so that gxsubmit's tests can compare
// its bytes with Python's. No network: a grpc-js interceptor captures each request as serialized and
// answers with a response given (base64) by the test.
//
// Usage: node interop.js INPUT.json  ->  JSON on stdout
//   mode "propose": build a proposal and chaincode-events requests, report bytes, digests, signatures.
//   mode "flow":    rebuild the proposal from bytes, then evaluate, endorse, submit and getStatus.
'use strict';

const fs = require('node:fs');
const crypto = require('node:crypto');
const grpc = require('@grpc/grpc-js');
const { connect, signers } = require('@hyperledger/fabric-gateway');

const b64 = (bytes) => Buffer.from(bytes).toString('base64');
const unb64 = (text) => new Uint8Array(Buffer.from(text, 'base64'));

function offlineClient(responses, captured) {
    const interceptor = (options, nextCall) => {
        const method = options.method_definition;
        let listener;
        return new grpc.InterceptingCall(nextCall(options), {
            start(metadata, l) {
                listener = l;
            },
            sendMessage(message) {
                captured[method.path] = b64(method.requestSerialize(message));
            },
            halfClose() {
                const response = responses[method.path];
                setImmediate(() => {
                    listener.onReceiveMetadata(new grpc.Metadata());
                    if (response === undefined) {
                        listener.onReceiveStatus({
                            code: grpc.status.UNIMPLEMENTED,
                            details: `no canned response for ${method.path}`,
                            metadata: new grpc.Metadata(),
                        });
                        return;
                    }
                    listener.onReceiveMessage(method.responseDeserialize(Buffer.from(response, 'base64')));
                    listener.onReceiveStatus({ code: grpc.status.OK, details: '', metadata: new grpc.Metadata() });
                });
            },
        });
    };
    // Never dialled: every call is answered by the interceptor.
    return new grpc.Client('127.0.0.1:1', grpc.credentials.createInsecure(), { interceptors: [interceptor] });
}

async function main() {
    const input = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
    const credentials = fs.readFileSync(input.certPath);
    const privateKey = crypto.createPrivateKey(fs.readFileSync(input.keyPath));
    const signer = signers.newPrivateKeySigner(privateKey); // RFC 6979, low-S
    const captured = {};
    const client = offlineClient(input.responses ?? {}, captured);
    const gateway = connect({ client, identity: { mspId: input.mspId, credentials }, signer });
    const out = {};
    try {
        if (input.mode === 'propose') {
            const contract = gateway.getNetwork(input.channel).getContract(input.chaincode);
            const transient = {};
            for (const [k, v] of Object.entries(input.transient ?? {})) transient[k] = v;
            const proposal = contract.newProposal(input.function, {
                arguments: input.args,
                transientData: transient,
                endorsingOrganizations: input.endorsingOrgs,
            });
            out.transactionId = proposal.getTransactionId();
            out.proposedTransaction = b64(proposal.getBytes());
            out.proposalDigest = b64(proposal.getDigest());
            out.proposalSignature = b64(await signer(proposal.getDigest()));
            out.events = [];
            const network = gateway.getNetwork(input.channel);
            const variants = [
                {},
                { startBlock: BigInt(input.eventsStartBlock) },
                {
                    checkpoint: {
                        getBlockNumber: () => BigInt(input.eventsStartBlock),
                        getTransactionId: () => input.eventsAfterTxId,
                    },
                },
            ];
            for (const options of variants) {
                const request = network.newChaincodeEventsRequest(input.chaincode, options);
                out.events.push({
                    request: b64(request.getBytes()),
                    signature: b64(await signer(request.getDigest())),
                });
            }
        } else if (input.mode === 'flow') {
            const forEvaluate = gateway.newProposal(unb64(input.proposedTransaction));
            out.evaluateResult = b64(await forEvaluate.evaluate());
            const proposal = gateway.newProposal(unb64(input.proposedTransaction));
            const transaction = await proposal.endorse();
            out.transactionDigest = b64(transaction.getDigest());
            out.result = b64(transaction.getResult());
            const commit = await transaction.submit();
            out.commitRequest = b64(commit.getBytes());
            out.commitDigest = b64(commit.getDigest());
            const status = await commit.getStatus();
            out.status = { blockNumber: status.blockNumber.toString(), code: status.code, successful: status.successful };
        } else {
            throw new Error(`unknown mode ${input.mode}`);
        }
        out.captured = captured;
    } finally {
        gateway.close();
        client.close();
    }
    process.stdout.write(JSON.stringify(out));
}

main().catch((err) => {
    process.stderr.write(`${err.stack ?? err}\n`);
    process.exit(1);
});
