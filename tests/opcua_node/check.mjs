// A second OPC UA implementation (node-opcua) against lineinspect's HMI.
// Usage: node check.mjs CONFIG.json   (endpoint, users, cert/key PEM, applicationUri, resultFile)
// Writes one JSON object, what each step got, to cfg.resultFile (stdout is not ours alone: node-opcua logs its
// warnings there). tests/integration/test_hmi_node_opcua.py judges it.
import { readFileSync, writeFileSync } from "node:fs";
import {
  OPCUAClient, MessageSecurityMode, SecurityPolicy, AttributeIds, UserTokenType,
  ClientSubscription, ClientMonitoredItem, TimestampsToReturn, constructEventFilter,
} from "node-opcua-client";

const cfg = JSON.parse(readFileSync(process.argv[2], "utf8"));
const out = {};
const report = (result) => writeFileSync(cfg.resultFile, JSON.stringify(result));

function client(mode, policy) {
  return OPCUAClient.create({
    applicationName: "lineinspect node-opcua check", applicationUri: cfg.applicationUri,
    securityMode: mode, securityPolicy: policy, endpointMustExist: false,
    certificateFile: cfg.cert, privateKeyFile: cfg.key,
    connectionStrategy: { maxRetry: 0, initialDelay: 100, maxDelay: 200 }, requestedSessionTimeout: 20000,
  });
}

async function session(user, password, mode = MessageSecurityMode.SignAndEncrypt, policy = SecurityPolicy.Basic256Sha256) {
  const c = client(mode, policy);
  await c.connect(cfg.endpoint);
  try {
    const identity = user === null ? { type: UserTokenType.Anonymous }
      : { type: UserTokenType.UserName, userName: user, password };
    return { c, s: await c.createSession(identity) };
  } catch (err) {
    await c.disconnect();
    throw err;
  }
}

async function attempt(name, fn) {
  try { out[name] = await fn(); } catch (err) { out[name] = { error: String(err.message || err).split("\n")[0] }; }
}

const timeout = setTimeout(() => { report({ ...out, timedOut: true }); process.exit(3); }, 60000);

await attempt("anonymous_none", async () => {
  const { c, s } = await session(null, null, MessageSecurityMode.None, SecurityPolicy.None);
  await s.close(); await c.disconnect(); return "ADMITTED";
});
await attempt("wrong_password", async () => {
  const { c, s } = await session("operator", "not-the-password");
  await s.close(); await c.disconnect(); return "ADMITTED";
});

const { c: vc, s: viewer } = await session("viewer", cfg.users.viewer);
const ns = (await viewer.readNamespaceArray()).indexOf("urn:lineinspect");
const mv = (await viewer.readNamespaceArray()).indexOf("http://opcfoundation.org/UA/MachineVision");
out.namespaces = { lineinspect: ns, machineVision: mv };
const read = async (id) => (await viewer.read({ nodeId: `ns=${ns};s=${id}`, attributeId: AttributeIds.Value })).value.value;
out.health = await read("Line.Health");
out.state = (await read("VisionSystem.VisionStateMachine.CurrentState")).text;
const browsed = await viewer.browse(`ns=${ns};s=VisionSystem`);
out.visionSystem = browsed.references.map((r) => r.browseName.toString()).sort();

const machine = `ns=${ns};s=VisionSystem.VisionStateMachine`;
const call = async (s, method, args = []) => {
  const r = await s.call({ objectId: machine, methodId: `${machine}.${method}`, inputArguments: args });
  return { status: r.statusCode.name, outputs: (r.outputArguments || []).map((v) => v.value) };
};
await attempt("viewer_halt", () => call(viewer, "Halt"));

// Result events: subscribe, then wait for a few.
const events = [];
const sub = ClientSubscription.create(viewer, { requestedPublishingInterval: 50, requestedLifetimeCount: 1000,
  requestedMaxKeepAliveCount: 10, maxNotificationsPerPublish: 1000, publishingEnabled: true, priority: 1 });
const filter = constructEventFilter(["EventType", "Message", `${ns}:ResultId`, `${ns}:Outcome`]);
const item = ClientMonitoredItem.create(sub, { nodeId: `ns=${ns};s=VisionSystem`, attributeId: AttributeIds.EventNotifier },
  { samplingInterval: 0, discardOldest: true, queueSize: 1000, filter }, TimestampsToReturn.Both);
item.on("changed", (fields) => events.push({ message: fields[1].value?.text, resultId: fields[2].value, outcome: fields[3].value }));
await new Promise((resolve) => setTimeout(resolve, cfg.eventWaitMs ?? 3000));
out.events = events.filter((e) => e.resultId).slice(0, 20);

const { c: oc, s: operator } = await session("operator", cfg.users.operator, MessageSecurityMode.Sign, SecurityPolicy.Aes128_Sha256_RsaOaep);
await attempt("operator_halt", () => call(operator, "Halt"));
await attempt("operator_reset", () => call(operator, "Reset"));
await operator.close(); await oc.disconnect();
await sub.terminate();
await viewer.close(); await vc.disconnect();
clearTimeout(timeout);
report(out);
