// A TensorGrid client written from docs/API.md alone, as a third party would: @grpc/grpc-js,
// @grpc/proto-loader and ethers v6, no TensorGrid code. tests/integration/test_js_client.py runs
// it against a real coordinator and node and checks the one JSON line it prints last.
//
// Environment: TG_TARGET (host:port), TG_CA (PEM of the coordinator's CA; empty: plain text),
// TG_PROTO (the proto/ directory), TG_MODEL and TG_INPUTS (an inference program and its
// safetensors inputs), TG_OUT (where to write the inference result).

import { createHash, randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import net from "node:net";
import tls from "node:tls";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import { ethers } from "ethers";

const env = (name) => {
  const value = process.env[name];
  if (value === undefined) throw new Error(`set ${name}`);
  return value;
};
const TARGET = env("TG_TARGET");
const CA = process.env.TG_CA ? readFileSync(process.env.TG_CA) : null;
const HOST = TARGET.slice(0, TARGET.lastIndexOf(":"));

// ---- the service, loaded from the .proto files --------------------------------------------------
const definition = protoLoader.loadSync("tensorgrid/v1/submit.proto", {
  includeDirs: [env("TG_PROTO")],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const { SubmitterService } = grpc.loadPackageDefinition(definition).tensorgrid.v1;
const credentials = CA ? grpc.credentials.createSsl(CA) : grpc.credentials.createInsecure();
const stub = new SubmitterService(TARGET, credentials, {
  "grpc.max_receive_message_length": 8 << 20,
});

const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");
const deadline = (seconds = 60) => ({ deadline: Date.now() + seconds * 1000 });

function unary(method, request, metadata = new grpc.Metadata(), seconds = 60) {
  return new Promise((resolve, reject) =>
    stub[method](request, metadata, deadline(seconds), (err, reply) => (err ? reject(err) : resolve(reply))),
  );
}

async function codeOf(promise) {
  try {
    await promise;
    return "OK";
  } catch (err) {
    if (err.code === undefined) throw err;
    return grpc.status[err.code];
  }
}

function serverStream(method, request, metadata) {
  return new Promise((resolve, reject) => {
    const items = [];
    const call = stub[method](request, metadata, deadline(240));
    call.on("data", (item) => items.push(item));
    call.on("error", reject);
    call.on("end", () => resolve(items));
  });
}

// ---- a session: GetChallenge → personal_sign → OpenSession → metadata ----------------------------
const wallet = ethers.Wallet.createRandom();
const address = wallet.address; // EIP-55 already
const signText = async (text) => Buffer.from(ethers.getBytes(await wallet.signMessage(text)));

async function openSession() {
  const challenge = await unary("GetChallenge", { address });
  const nonceHex = Buffer.from(challenge.nonce).toString("hex");
  const text = `TensorGrid submitter session\naddress: ${address}\nnonce: ${nonceHex}`;
  const session = await unary("OpenSession", { address, nonce: challenge.nonce, signature: await signText(text) });
  const metadata = new grpc.Metadata();
  metadata.add("x-tensorgrid-session", session.session_token);
  return metadata;
}

// ---- blobs --------------------------------------------------------------------------------------
function upload(md, bytes) {
  return new Promise((resolve, reject) => {
    const call = stub.UploadBlob(md, deadline(120), (err, ref) => (err ? reject(err) : resolve(ref)));
    call.write({ header: { sha256: sha256(bytes), size: String(bytes.length) } });
    for (let at = 0; at < bytes.length; at += 1 << 20) call.write({ data: bytes.subarray(at, at + (1 << 20)) });
    call.end();
  });
}

async function download(md, ref) {
  const chunks = await serverStream("DownloadBlob", { sha256: ref.sha256, offset: "0" }, md);
  const bytes = Buffer.concat(chunks.map((c) => c.data));
  if (Number(chunks[0].total_size) !== bytes.length || sha256(bytes) !== ref.sha256) {
    throw new Error(`download of ${ref.sha256} does not match its hash or size`);
  }
  return bytes;
}

// The bulk port: TGB1 + token, a JSON line, then the bytes (docs/API.md, "The bulk port").
function bulkConnect(port) {
  const options = { host: HOST, port };
  return CA ? tls.connect({ ...options, ca: CA }) : net.connect(options);
}

function bulkTransfer(ticket, send) {
  return new Promise((resolve, reject) => {
    const socket = bulkConnect(ticket.port);
    let pending = Buffer.alloc(0);
    const lines = [];
    let body = null;
    socket.on("error", reject);
    socket.on(CA ? "secureConnect" : "connect", () => socket.write(Buffer.concat([Buffer.from("TGB1"), ticket.token])));
    socket.on("data", (data) => {
      if (body !== null) return body.push(data);
      pending = Buffer.concat([pending, data]);
      let newline;
      while (body === null && (newline = pending.indexOf(10)) >= 0) {
        lines.push(JSON.parse(pending.subarray(0, newline).toString()));
        pending = pending.subarray(newline + 1);
        if (lines.length === 1) {
          if (lines[0].error) return reject(new Error(`bulk port: ${lines[0].error}`));
          if (send) socket.write(Buffer.concat([send, createHash("sha256").update(send).digest()]));
          else body = [pending];
        } else {
          socket.end();
          resolve(lines[1]);
        }
      }
    });
    socket.on("end", () => (body !== null ? resolve(Buffer.concat(body)) : null));
  });
}

// ---- jobs ---------------------------------------------------------------------------------------
function signedSpec(spec) {
  const spec_json = Buffer.from(JSON.stringify(spec));
  const specHash = sha256(spec_json);
  const jobId = ethers.keccak256(ethers.concat([address, "0x" + specHash])).slice(2);
  return { spec_json, specHash, jobId };
}

async function submit(md, spec, { validateOnly = false } = {}) {
  const { spec_json, specHash, jobId } = signedSpec(spec);
  const signature = await signText(`TensorGrid job submission\nspec: ${specHash}`);
  const request = { spec_json, submitter: address, signature };
  if (validateOnly) return { jobId, checked: await unary("ValidateJob", request, md, 120) };
  const job = await unary("SubmitJob", request, md, 120);
  if (job.job_id !== jobId || job.spec_hash !== specHash) throw new Error("job id or spec hash differs from the doc's formula");
  return job;
}

async function cancel(md, jobId) {
  const signature = await signText(`TensorGrid job cancellation\njob: ${jobId}`);
  return unary("CancelJob", { job_id: jobId, signature }, md);
}

// Rows of a safetensors file: 8-byte little-endian header length, then the JSON header.
function safetensorsRows(bytes) {
  const length = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + length).toString());
  return Math.min(...Object.entries(header).filter(([k]) => k !== "__metadata__").map(([, t]) => t.shape[0]));
}

// The verification fee of docs/API.md ("The escrow budget rule"), default policy (no decoys unless asked for).
function feeTasks(T, R, v = { target_detection: 0.99, corrupt_fraction: 0.01, canary_rate: 0.005, decoys: 0 }) {
  const B = Math.max(1, Math.floor((R * 0.05) / 2));
  const perTask = 1 - (1 - v.target_detection) ** (1 / Math.max(1, T));
  const m0 = perTask >= 1 ? R : Math.ceil(Math.log(1 - perTask) / Math.log(1 - v.corrupt_fraction));
  const m = Math.max(1, Math.min(R, m0, B));
  let D = Math.min(Math.ceil(v.decoys * T - 1e-9), Math.max(0, Math.floor((T * B) / m) - T));
  const k = Math.floor((R - m - 1) / m);
  if (k <= 0 || (T - 1) * k < D) D = 0;
  const p = Math.min(1, m / R);
  const c = v.canary_rate;
  const N = T + D;
  return Math.ceil(N * (p + c) + D * p + 2 * Math.sqrt(N * (p * (1 - p) + c * (1 - c)) + D * p * (1 - p)) - 1e-9);
}

async function main() {
  const report = { address };
  const anonymous = new grpc.Metadata();
  report.no_session = await codeOf(unary("ListJobs", {}, anonymous));
  const md = await openSession();

  // a blob there and back, over gRPC and over the bulk port
  const blob = randomBytes(3000);
  const ref = await upload(md, blob);
  report.blob_roundtrip = ref.sha256 === sha256(blob) && (await download(md, ref)).equals(blob);
  const big = randomBytes(1_500_000);
  const upTicket = await unary("OpenBulkUpload", { size: String(big.length), sha256: "" }, md);
  const stored = await bulkTransfer(upTicket, big);
  const downTicket = await unary("OpenBulkDownload", { sha256: stored.sha256, offset: "0" }, md);
  const back = await bulkTransfer(downTicket, null);
  report.bulk_roundtrip = stored.sha256 === sha256(big) && back.equals(big);

  // a noop job, its wei as a decimal string past 2^53
  const noop = { kind: "noop", tasks: 2, nonce: randomBytes(8).toString("hex"), reward_per_task_wei: "9007199254740993" };
  const { jobId, checked } = await submit(md, noop, { validateOnly: true });
  report.validate = { job_id_matches: checked.job_id === jobId, paid_tasks: checked.paid_tasks, exists: checked.exists };
  const job = await submit(md, noop);
  const events = await serverStream("WatchJob", { job_id: job.job_id, after_seq: "0" }, md);
  report.noop_events = events.map((e) => e.kind);
  const done = await unary("GetJob", { job_id: job.job_id }, md);
  const manifest = JSON.parse((await download(md, done.result)).toString());
  report.noop = {
    state: done.state,
    tasks_done: done.tasks_done,
    spec_kept: done.spec_json.toString() === JSON.stringify(noop),
    result_is_empty_hashes: manifest.length === 2 && manifest.every((h) => h === sha256(Buffer.alloc(0))),
  };

  // inference: the escrow rule's paid_tasks (with the default policy's fee), then a job without checks
  const model = readFileSync(env("TG_MODEL"));
  const inputs = readFileSync(env("TG_INPUTS"));
  const [modelRef, inputsRef] = [await upload(md, model), await upload(md, inputs)];
  const blobRef = (r) => ({ sha256: r.sha256, size: Number(r.size) });
  const shardRows = 1000;
  const shards = Math.ceil(safetensorsRows(inputs) / shardRows);
  const inference = {
    kind: "inference",
    model: blobRef(modelRef),
    inputs: blobRef(inputsRef),
    shard_rows: shardRows,
    batch_size: 250,
    device: "cpu",
    nonce: randomBytes(8).toString("hex"),
  };
  const priced = await submit(md, inference, { validateOnly: true });
  report.escrow_rule = { paid_tasks: priced.checked.paid_tasks, computed: shards + feeTasks(shards, shardRows) };
  const unchecked = await submit(md, { ...inference, verification: { mode: "none" } });
  const inferenceEvents = await serverStream("WatchJob", { job_id: unchecked.job_id, after_seq: "0" }, md);
  const inferenceJob = await unary("GetJob", { job_id: unchecked.job_id }, md);
  writeFileSync(env("TG_OUT"), await download(md, inferenceJob.result));
  report.inference = { state: inferenceJob.state, last_event: inferenceEvents.at(-1).kind, shards };

  // cancelling: a job no node can run (cuda), then a finished one
  const waiting = await submit(md, { kind: "noop", tasks: 1, device: "cuda", nonce: randomBytes(8).toString("hex") });
  report.cancelled = (await cancel(md, waiting.job_id)).state;
  report.cancel_again = (await cancel(md, waiting.job_id)).state;
  report.cancel_finished = await codeOf(cancel(md, job.job_id));

  // documented codes for bad requests
  report.codes = {
    earnings_malformed: await codeOf(unary("GetEarnings", { address: "0x1234" })),
    earnings_fresh: (await unary("GetEarnings", { address: ethers.Wallet.createRandom().address })).cumulative_wei,
    unknown_job: await codeOf(unary("GetJob", { job_id: "ab".repeat(32) }, md)),
    download_past_end: await codeOf(serverStream("DownloadBlob", { sha256: ref.sha256, offset: String(blob.length + 1) }, md)),
    bad_cancel_signature: await codeOf(unary("CancelJob", { job_id: job.job_id, signature: Buffer.alloc(65, 1) }, md)),
    no_epoch: await codeOf(unary("GetEpoch", { epoch: "0" })),
  };
  stub.close();
  console.log(JSON.stringify(report));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
