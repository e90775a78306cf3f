//! Shapes of recently compiled requests, so that a [`crate::Placer`] compiling requests that
//! differ only in their ids and quota owners (a manager's flavours) resolves each one once and
//! every placement shares its [`RequestShape`](crate::request::RequestShape): what a placement
//! keeps in the state is then the request's own copy and two pointers, not a resolved copy each.

use crate::error::PlacementRequestError;
use crate::fasthash::IntMap;
use crate::model::Cluster;
use crate::request::{CompiledRequest, PlacementRequest};
use crate::state::State;
use std::sync::Arc;

/// Entries kept before the cache starts over.
const LIMIT: usize = 1024;

/// Compiled requests by [`PlacementRequest::shape_hash`], each lending its shape to equal requests.
#[derive(Default)]
pub(crate) struct ShapeCache {
    /// The cluster the entries were compiled against (held, so it cannot be freed and another
    /// allocated at its address).
    cluster: Option<Arc<Cluster>>,
    entries: IntMap<u64, Arc<CompiledRequest>>,
}

impl ShapeCache {
    /// [`State::compile`], sharing the shape of an equal request compiled before. Requests naming a
    /// server group are compiled afresh: their shape depends on the state's groups.
    pub(crate) fn compile(
        &mut self,
        state: &State,
        req: &PlacementRequest,
    ) -> Result<Arc<CompiledRequest>, PlacementRequestError> {
        self.compile_with(state, req, || Arc::new(req.clone()))
    }

    /// As [`ShapeCache::compile`], keeping `req` as the compiled request's source (no copy).
    pub(crate) fn compile_shared(
        &mut self,
        state: &State,
        req: Arc<PlacementRequest>,
    ) -> Result<Arc<CompiledRequest>, PlacementRequestError> {
        let source = req.clone();
        self.compile_with(state, &req, move || source)
    }

    /// Compiles `req`, whose copy to keep `source` makes.
    fn compile_with(
        &mut self,
        state: &State,
        req: &PlacementRequest,
        source: impl FnOnce() -> Arc<PlacementRequest>,
    ) -> Result<Arc<CompiledRequest>, PlacementRequestError> {
        if req.server_group.is_some() {
            return state.compile_shared(source());
        }
        // Ids resolve against the cluster: a new one (a host added) starts the cache over.
        if !self
            .cluster
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, state.cluster()))
        {
            self.entries.clear();
            self.cluster = Some(state.cluster().clone());
        }
        let key = req.shape_hash();
        if let Some(like) = self.entries.get(&key) {
            if req.same_but_owners(like.source()) {
                return CompiledRequest::with_shape_of(source(), like).map(Arc::new);
            }
        }
        let compiled = state.compile_shared(source())?;
        if self.entries.len() >= LIMIT {
            self.entries.clear();
        }
        self.entries.insert(key, compiled.clone());
        Ok(compiled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::RequestShape;

    fn state() -> State {
        State::new(Arc::new(
            Cluster::from_json(
                r#"{"hosts": [{"name": "a", "inventories": {"VCPU": {"total": 8}}}]}"#,
            )
            .unwrap(),
        ))
    }

    fn shape(c: &CompiledRequest) -> *const RequestShape {
        &**c
    }

    #[test]
    fn equal_requests_share_a_shape_and_keep_their_own_ids() {
        let s = state();
        let mut cache = ShapeCache::default();
        let a = cache
            .compile(&s, &PlacementRequest::new("a", &[("VCPU", 2)]))
            .unwrap();
        let mut other = PlacementRequest::new("b", &[("VCPU", 2)]);
        other.project = Some("web".into());
        let b = cache.compile(&s, &other).unwrap();
        assert_eq!(shape(&a), shape(&b));
        assert_eq!((a.id(), b.id()), ("a", "b"));
        assert_eq!(b.source().project.as_deref(), Some("web"));
        let fresh = s.compile(&other).unwrap();
        assert_eq!(format!("{:?}", *b), format!("{:?}", *fresh));

        // Anything else differing: a shape of its own.
        let mut urgent = PlacementRequest::new("c", &[("VCPU", 2)]);
        urgent.priority = 5;
        let c = cache.compile(&s, &urgent).unwrap();
        assert_ne!(shape(&a), shape(&c));
        assert_eq!(c.priority, 5);
        let d = cache
            .compile(&s, &PlacementRequest::new("d", &[("VCPU", 3)]))
            .unwrap();
        assert_eq!(d.totals[0].1, 3);
    }

    #[test]
    fn a_request_handed_over_is_kept_as_is() {
        let s = state();
        let mut cache = ShapeCache::default();
        let first = Arc::new(PlacementRequest::new("a", &[("VCPU", 2)]));
        let second = Arc::new(PlacementRequest::new("b", &[("VCPU", 2)]));
        let a = cache.compile_shared(&s, first.clone()).unwrap();
        let b = cache.compile_shared(&s, second.clone()).unwrap();
        assert!(Arc::ptr_eq(a.source(), &first) && Arc::ptr_eq(b.source(), &second));
        assert_eq!(shape(&a), shape(&b));
    }

    #[test]
    fn a_shared_shape_still_validates_the_request_s_own_fields() {
        let s = state();
        let mut cache = ShapeCache::default();
        cache
            .compile(&s, &PlacementRequest::new("a", &[("VCPU", 2)]))
            .unwrap();
        let mut orphan = PlacementRequest::new("b", &[("VCPU", 2)]);
        orphan.user = Some("alice".into());
        assert_eq!(
            cache.compile(&s, &orphan).unwrap_err(),
            s.compile(&orphan).unwrap_err()
        );
        let unnamed = PlacementRequest::new("", &[("VCPU", 2)]);
        assert_eq!(
            cache.compile(&s, &unnamed).unwrap_err(),
            s.compile(&unnamed).unwrap_err()
        );
    }

    #[test]
    fn a_new_cluster_starts_the_cache_over() {
        let mut s = state();
        let mut cache = ShapeCache::default();
        let mut gpu = PlacementRequest::new("a", &[("VCPU", 2)]);
        gpu.required_traits.push("HW_GPU".into());
        assert_eq!(cache.compile(&s, &gpu).unwrap().required_traits[0].id, None);
        let mut spec = crate::model::HostSpec {
            name: "g".into(),
            traits: vec!["HW_GPU".into()],
            ..Default::default()
        };
        spec.inventories
            .insert("VCPU".into(), crate::model::InventorySpec::new(8));
        s.add_host(&spec).unwrap();
        gpu.id = "b".into();
        let again = cache.compile(&s, &gpu).unwrap();
        assert!(again.required_traits[0].id.is_some());
    }
}
