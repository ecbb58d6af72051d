// Starts GraphiQL against this server: queries and mutations over HTTP at /graphql,
// subscriptions over /graphql/ws (graphql-transport-ws). Every asset comes from this
// server, so GraphiQL works without any other network.
//
// Every request carries a bearer token, from the headers editor. It opens with one:
// the token the server put in the page (development issuer, loopback only), else the
// one this tab signed in with on the Board pages, else a placeholder to replace with
// a token from the identity provider. Headers are not persisted (they hold a token).
// Subscriptions send the same headers in connection_init's payload: one websocket
// per distinct set of headers, so a new token opens a new socket.
(function () {
  var wsScheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  var meta = document.querySelector('meta[name="careboard-token"]');
  var token = (meta && meta.content) || null;
  if (!token) {
    try {
      token = sessionStorage.getItem('careboard.token');
    } catch (_) {
      token = null;
    }
  }
  var headers = {
    Authorization: 'Bearer ' + (token || '<paste a token from your identity provider>'),
  };
  var fetchers = {};
  function fetcherFor(requestHeaders) {
    var key = JSON.stringify(requestHeaders || {});
    if (!fetchers[key]) {
      fetchers[key] = GraphiQL.createFetcher({
        url: location.origin + '/graphql',
        wsClient: graphqlWs.createClient({
          url: wsScheme + '//' + location.host + '/graphql/ws',
          lazy: true,
          connectionParams: requestHeaders || {},
        }),
      });
    }
    return fetchers[key];
  }
  function fetcher(params, options) {
    return fetcherFor(options && options.headers)(params, options);
  }
  var root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultEditorToolsVisibility: token ? true : 'headers',
      shouldPersistHeaders: false,
      headers: JSON.stringify(headers, null, 2),
      defaultHeaders: JSON.stringify(headers, null, 2),
    })
  );
})();
