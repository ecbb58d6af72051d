//! Answers keep the order of the fields the document selects.
//!
//! The GraphQL specification orders each object of an answer as its selection set
//! orders the fields (CollectFields: fields, then those of fragments, each where it is
//! spread). async-graphql 7 resolves an object's fields concurrently and puts each in
//! the answer as it completes, so fields that wait (for the database, say) come back in
//! whatever order they finished, and the same query answered `a`, `b`, `c` once and
//! `b`, `a`, `c` the next time. This extension puts every object of an answer back in
//! the document's order once it is executed (queries, mutations and every frame of a
//! subscription), without touching a value.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextPrepareRequest,
    NextSubscribe,
};
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationDefinition, Selection, SelectionSet,
};
use async_graphql::{Name, Request, Response, ServerResult, Value};
use futures::stream::{BoxStream, StreamExt};

/// The extension's factory (one [`FieldOrderExtension`] per request).
pub struct FieldOrder;

impl ExtensionFactory for FieldOrder {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(FieldOrderExtension::default())
    }
}

/// Holds the request's document from its parse until its answers are put in order,
/// and the operation the request names.
#[derive(Default)]
pub struct FieldOrderExtension {
    document: Mutex<Option<Arc<ExecutableDocument>>>,
    operation_name: Mutex<Option<String>>,
}

impl FieldOrderExtension {
    fn document(&self) -> Option<Arc<ExecutableDocument>> {
        self.document.lock().expect("document lock").clone()
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for FieldOrderExtension {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        *self.operation_name.lock().expect("operation name lock") = request.operation_name.clone();
        next.run(ctx, request).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &async_graphql::Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        *self.document.lock().expect("document lock") = Some(Arc::new(document.clone()));
        Ok(document)
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let mut response = next.run(ctx, operation_name).await;
        if let Some(document) = self.document() {
            let named = self
                .operation_name
                .lock()
                .expect("operation name lock")
                .clone();
            in_document_order(
                &mut response.data,
                &document,
                operation_name.or(named.as_deref()),
            );
        }
        response
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        let frames = next.run(ctx, stream);
        match self.document() {
            Some(document) => {
                let name = self
                    .operation_name
                    .lock()
                    .expect("operation name lock")
                    .clone();
                frames
                    .map(move |mut response| {
                        in_document_order(&mut response.data, &document, name.as_deref());
                        response
                    })
                    .boxed()
            }
            None => frames,
        }
    }
}

fn operation<'a>(
    document: &'a ExecutableDocument,
    name: Option<&str>,
) -> Option<&'a OperationDefinition> {
    match (&document.operations, name) {
        (DocumentOperations::Single(op), _) => Some(&op.node),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name).map(|op| &op.node),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => {
            ops.values().next().map(|op| &op.node)
        }
        (DocumentOperations::Multiple(_), None) => None,
    }
}

/// Puts every object of `data` in the order `document`'s operation `name` selects its
/// fields. Keys the selection does not name (none, from a valid execution) keep their
/// place after the others.
pub fn in_document_order(data: &mut Value, document: &ExecutableDocument, name: Option<&str>) {
    if let Some(op) = operation(document, name) {
        let plan = Plan::of(&[&op.selection_set.node], document);
        plan.apply(data);
    }
}

/// The response keys of a selection, in order, each with the plan of its own
/// selection (`None` for a leaf).
struct Plan<'a> {
    keys: Vec<(&'a str, Option<Plan<'a>>)>,
}

impl<'a> Plan<'a> {
    fn of(sets: &[&'a SelectionSet], document: &'a ExecutableDocument) -> Plan<'a> {
        let mut fields: Vec<(&'a str, Vec<&'a SelectionSet>)> = Vec::new();
        let mut spread = HashSet::new();
        collect(sets, document, &mut fields, &mut spread);
        Plan {
            keys: fields
                .into_iter()
                .map(|(key, subsets)| {
                    let leaf = subsets.iter().all(|s| s.items.is_empty());
                    (key, (!leaf).then(|| Plan::of(&subsets, document)))
                })
                .collect(),
        }
    }

    fn apply(&self, value: &mut Value) {
        match value {
            Value::List(items) => items.iter_mut().for_each(|item| self.apply(item)),
            Value::Object(map) => {
                // The keys already in the selection's order (the usual case): a walk of
                // both in step, no lookups.
                let mut plan = self.keys.iter();
                let in_order = map.keys().all(|key| plan.any(|(k, _)| *k == key.as_str()));
                if !in_order {
                    let mut ordered = async_graphql::indexmap::IndexMap::with_capacity(map.len());
                    for (key, _) in &self.keys {
                        if let Some((name, v)) = map.shift_remove_entry(*key) {
                            ordered.insert(name, v);
                        }
                    }
                    ordered.extend(map.drain(..));
                    *map = ordered;
                }
                let mut plan = self.keys.iter();
                for (key, value) in map.iter_mut() {
                    // Keys the selection does not name are last: the plan ends there.
                    let Some((_, sub)) = plan.find(|(k, _)| same(k, key)) else {
                        break;
                    };
                    if let Some(sub) = sub {
                        sub.apply(value);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Whether the response key `key` is the selection's `k`: the answer's keys are the
/// document's own names (shared, not copied), so the same text at the same place is
/// the usual match, found without reading the text.
fn same(k: &str, key: &Name) -> bool {
    let key = key.as_str();
    std::ptr::eq(k, key) || k == key
}

/// CollectFields without type conditions: each response key once, where it first
/// appears, with every selection set given for it; each fragment once per level.
fn collect<'a>(
    sets: &[&'a SelectionSet],
    document: &'a ExecutableDocument,
    fields: &mut Vec<(&'a str, Vec<&'a SelectionSet>)>,
    spread: &mut HashSet<&'a str>,
) {
    for set in sets {
        for item in &set.items {
            match &item.node {
                Selection::Field(field) => {
                    let key = field.node.response_key().node.as_str();
                    let subset = &field.node.selection_set.node;
                    match fields.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, subsets)) => subsets.push(subset),
                        None => fields.push((key, vec![subset])),
                    }
                }
                Selection::InlineFragment(fragment) => collect(
                    &[&fragment.node.selection_set.node],
                    document,
                    fields,
                    spread,
                ),
                Selection::FragmentSpread(s) => {
                    let name = s.node.fragment_name.node.as_str();
                    if spread.insert(name) {
                        if let Some(fragment) = document.fragments.get(name) {
                            collect(
                                &[&fragment.node.selection_set.node],
                                document,
                                fields,
                                spread,
                            );
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ordered(query: &str, data: serde_json::Value) -> String {
        let document = async_graphql::parser::parse_query(query).unwrap();
        let mut value = Value::from_json(data).unwrap();
        in_document_order(&mut value, &document, None);
        serde_json::to_string(&value).unwrap()
    }

    #[test]
    fn objects_follow_the_selection_through_aliases_fragments_and_lists() {
        let query =
            "query Q { b: x c { ...F z } a: x } fragment F on C { y w { ... on W { q p } } }";
        let data = serde_json::json!({
            "a": 1,
            "c": [{"z": 3, "w": {"p": 1, "q": 2}, "y": 2}, {"w": null, "y": 5, "z": 6}],
            "b": 2,
        });
        assert_eq!(
            ordered(query, data),
            r#"{"b":2,"c":[{"y":2,"w":{"q":2,"p":1},"z":3},{"y":5,"w":null,"z":6}],"a":1}"#
        );
    }

    #[test]
    fn keys_the_selection_does_not_name_stay_after_the_others() {
        assert_eq!(
            ordered("{ b a }", serde_json::json!({"x": 0, "a": 1, "b": 2})),
            r#"{"b":2,"a":1,"x":0}"#
        );
    }
}
