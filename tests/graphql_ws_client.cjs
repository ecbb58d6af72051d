// The reference graphql-ws client (npm `graphql-ws`, over the `ws` package) against
// the real server, run by tests/api/graphql_ws_client.rs:
//   node graphql_ws_client.cjs <node_modules> <ws url> <token> <boardId> <frames>
// Two boardChanged subscriptions on one client (each until <frames> frames), a query
// over the socket, and a subscription the schema refuses. Prints one JSON object.
const path = require('path');
const modules = process.argv[2];
const { createClient } = require(path.join(modules, 'graphql-ws'));
const WebSocket = require(path.join(modules, 'ws'));
const [url, token, boardId, wanted] = process.argv.slice(3);
const frames = Number(wanted);

const client = createClient({
  url,
  webSocketImpl: WebSocket,
  connectionParams: { Authorization: `Bearer ${token}` },
  retryAttempts: 0,
  lazy: true,
});

// Until `limit` results (then unsubscribes), or until the server completes it.
function collect(query, variables, limit) {
  return new Promise((resolve) => {
    const got = [];
    let dispose = () => {};
    dispose = client.subscribe(
      { query, variables },
      {
        next: (value) => {
          got.push(value);
          if (got.length >= limit) {
            dispose();
            resolve({ results: got });
          }
        },
        error: (error) =>
          resolve({
            results: got,
            error: Array.isArray(error)
              ? error
              : { message: String(error && error.message), code: error && error.code, reason: error && error.reason },
          }),
        complete: () => resolve({ results: got, completed: true }),
      },
    );
  });
}

(async () => {
  const watch =
    'subscription($b: ID!) { boardChanged(boardId: $b) { version counts { waiting } } }';
  const [first, second, query, refused] = await Promise.all([
    collect(watch, { b: boardId }, frames),
    collect(watch, { b: boardId }, frames),
    collect('query($b: ID!) { board(id: $b) { version } }', { b: boardId }, Infinity),
    collect('subscription { boardChanged(boardId: "not-an-id") { version } }', {}, Infinity),
  ]);
  await client.dispose();
  process.stdout.write(JSON.stringify({ first, second, query, refused }));
  process.exit(0);
})().catch((e) => {
  process.stderr.write(String(e && e.stack || e));
  process.exit(1);
});
