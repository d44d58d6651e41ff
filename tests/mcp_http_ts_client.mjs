// The TypeScript SDK (@modelcontextprotocol/sdk) against the agent's MCP over Streamable HTTP:
// connect with StreamableHTTPClientTransport (initialize handshake), list the tool, call it with
// and without unreachable_only (the SDK validates structuredContent against outputSchema), close.
// Usage: node tests/mcp_http_ts_client.mjs URL NODE_MODULES_DIR   (run by mcp_http_clients.sh)
import { pathToFileURL } from "node:url";
import path from "node:path";

const [url, modules] = process.argv.slice(2);
const sdk = (p) => import(pathToFileURL(path.join(modules, "@modelcontextprotocol/sdk/dist/esm", p)).href);
const { Client } = await sdk("client/index.js");
const { StreamableHTTPClientTransport } = await sdk("client/streamableHttp.js");

function check(cond, what) {
  if (!cond) {
    console.error(`check failed: ${what}`);
    process.exit(1);
  }
}

const client = new Client({ name: "sigma-ts-interop", version: "1.0.0" });
const transport = new StreamableHTTPClientTransport(new URL(url));
await client.connect(transport);
console.log(`negotiated ${transport.protocolVersion ?? "(not exposed)"}`);

const { tools } = await client.listTools();
check(tools.length === 1 && tools[0].name === "query_backend_health", JSON.stringify(tools));
check(tools[0].outputSchema?.type === "object", "outputSchema");

const deadline = Date.now() + 20_000;
let all;
for (;;) {
  all = await client.callTool({ name: "query_backend_health", arguments: {} });
  check(!all.isError, JSON.stringify(all));
  if (all.structuredContent.status === "current") break;
  check(Date.now() < deadline, `no probe cycle: ${JSON.stringify(all.structuredContent)}`);
  await new Promise((r) => setTimeout(r, 300));
}
const routes = all.structuredContent.backends.map((b) => b.route).sort();
check(JSON.stringify(routes) === '["route-down","route-up"]', `all: ${routes}`);

const down = await client.callTool({ name: "query_backend_health", arguments: { unreachable_only: true } });
check(!down.isError, JSON.stringify(down));
const only = down.structuredContent.backends;
check(only.length === 1 && only[0].route === "route-down" && only[0].reason === "refused", JSON.stringify(only));

await client.close();
console.log("ok");
