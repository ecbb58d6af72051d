// Starts GraphiQL against this server: queries and mutations over HTTP at /graphql,
// subscriptions over /graphql/ws (graphql-transport-ws). Every asset comes from this
// server, so GraphiQL works without any other network.
(function () {
  var wsScheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  var fetcher = GraphiQL.createFetcher({
    url: location.origin + '/graphql',
    wsClient: graphqlWs.createClient({
      url: wsScheme + '//' + location.host + '/graphql/ws',
      lazy: true,
    }),
  });
  var root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultEditorToolsVisibility: true,
      shouldPersistHeaders: true,
      defaultHeaders: JSON.stringify({ 'x-actor': 'graphiql' }, null, 2),
    })
  );
})();
