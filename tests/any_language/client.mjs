// A client in another language: Node.js with @grpc/grpc-js, loading protos/ as they are
// (no generated code). It reads the addresses and the token from the same environment
// variables as the services, calls one method of each service, runs a small session while
// following its event stream, and prints what it got as one JSON object.
import { fileURLToPath } from "node:url";
import path from "node:path";
import fs from "node:fs";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const PROTOS = fileURLToPath(new URL("../../protos", import.meta.url));
const DEADLINE_MS = 30_000;

function protoFiles(folder) {
  return fs
    .readdirSync(folder, { recursive: true })
    .filter((name) => name.endsWith(".proto"))
    .map((name) => path.join(folder, name));
}

// google/protobuf imports resolve from proto-loader's own copies of the well-known types.
const definition = protoLoader.loadSync(protoFiles(PROTOS), {
  includeDirs: [PROTOS],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const easel = grpc.loadPackageDefinition(definition).easel;

const token = process.env.EASEL_AUTH_TOKEN;

function client(Service, service) {
  const address = process.env[`EASEL_${service.toUpperCase()}_ADDRESS`];
  return new Service(address, grpc.credentials.createInsecure());
}

function metadata(withToken = true) {
  const result = new grpc.Metadata();
  if (withToken && token) result.set("authorization", `Bearer ${token}`);
  return result;
}

function call(stub, method, request, withToken = true) {
  const deadline = Date.now() + DEADLINE_MS;
  return new Promise((resolve, reject) => {
    stub[method](request, metadata(withToken), { deadline }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

// google.protobuf.Struct to and from plain JSON values. proto-loader brings its own copy
// of the well-known types, whose field names stay camelCase whatever `keepCase` says.
function toValue(value) {
  if (typeof value === "number") return { numberValue: value };
  if (typeof value === "string") return { stringValue: value };
  if (typeof value === "boolean") return { boolValue: value };
  throw new Error(`no Struct value for ${JSON.stringify(value)}`);
}

function toStruct(object) {
  return { fields: Object.fromEntries(Object.entries(object).map(([k, v]) => [k, toValue(v)])) };
}

function fromStruct(struct) {
  return Object.fromEntries(Object.entries(struct.fields).map(([k, v]) => [k, v[v.kind]]));
}

// (2 + 3) * 4: nodes that need no model.
const MATH_GRAPH = {
  nodes: [
    { id: "sum", type: "add", inputs: toStruct({ a: 2, b: 3 }) },
    { id: "product", type: "mul", inputs: toStruct({ b: 4 }) },
  ],
  edges: [
    {
      source: { node_id: "sum", field: "value" },
      destination: { node_id: "product", field: "a" },
    },
  ],
};

// Every event of one run of the session, the run invoked once the stream has delivered
// the session's snapshot, so no event is missed.
function watchRun(sessions, sessionId) {
  const events = [];
  const stream = sessions.WatchSessionEvents({ session_ids: [sessionId] }, metadata(), {
    deadline: Date.now() + DEADLINE_MS,
  });
  return new Promise((resolve, reject) => {
    stream.on("data", ({ event }) => {
      const seen = { payload: event.payload, node_id: event.node_id };
      if (event.payload === "invocation_complete") {
        seen.outputs = fromStruct(event.invocation_complete.outputs);
      }
      events.push(seen);
      if (event.payload === "snapshot") {
        call(sessions, "InvokeSession", { session_id: sessionId, all: true }).catch(reject);
      }
      if (["session_complete", "session_failed", "session_cancelled"].includes(event.payload)) {
        stream.cancel();
        resolve(events);
      }
    });
    stream.on("error", (error) => {
      if (error.code !== grpc.status.CANCELLED) reject(error);
    });
  });
}

const downloads = client(easel.downloader.v1.DownloadService, "downloader");
const records = client(easel.model_manager.v1.ModelRecordService, "model_manager");
const generation = client(easel.inference.v1.GenerationService, "inference");
const invocations = client(easel.invoker.v1.InvocationService, "invoker");
const sessions = client(easel.invoker.v1.SessionService, "invoker");

const jobs = await call(downloads, "ListDownloadJobs", {});
const store = await call(records, "GetStoreInfo", {});
const schedulers = await call(generation, "ListSchedulers", {});
const types = await call(invocations, "ListInvocationTypes", {});
const { session } = await call(sessions, "CreateSession", { graph: MATH_GRAPH });
const events = await watchRun(sessions, session.id);
const unauthenticated = await call(records, "GetStoreInfo", {}, false).then(
  () => null,
  (error) => ({ code: grpc.status[error.code], details: error.details }),
);

console.log(
  JSON.stringify({
    downloader: { jobs: jobs.jobs },
    model_manager: { model_count: store.model_count, models_dir: store.models_dir },
    inference: { schedulers: schedulers.schedulers.map((scheduler) => scheduler.name) },
    invoker: { types: types.invocation_types.map((type) => type.name) },
    session: { id: session.id, status: session.status, events },
    unauthenticated,
  }),
);
for (const stub of [downloads, records, generation, invocations, sessions]) stub.close();
