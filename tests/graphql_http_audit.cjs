// Runs the graphql-http package's GraphQL-over-HTTP server audit against a URL and
// prints every result as JSON: node graphql_http_audit.cjs <node_modules dir> <url> <token>
// Every request carries the bearer token, as every client of Careboard must.
const path = require('path');
const { auditServer } = require(path.join(process.argv[2], 'graphql-http'));

const token = process.argv[4];
const fetchFn = (input, init = {}) => {
  const headers = new Headers(init.headers);
  headers.set('authorization', `Bearer ${token}`);
  return fetch(input, { ...init, headers });
};

auditServer({ url: process.argv[3], fetchFn }).then(
  (results) => {
    const out = results.map((r) => ({ id: r.id, name: r.name, status: r.status, reason: r.reason }));
    console.log(JSON.stringify(out));
  },
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
