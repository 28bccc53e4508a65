//! The index of watched objects: what the desired state is computed from.
//!
//! Both runtimes fill it — the Kubernetes runtime from its reflectors, the
//! local runtime from manifest files — so the logic that reads it runs the
//! same in both. Values are `Arc`s so a snapshot of a reflector's store
//! copies pointers, not objects.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use crate::crd::MeshPolicy;

/// `namespace/name` of a namespaced object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    pub fn of<K: ResourceExt>(obj: &K) -> Self {
        Self::new(&obj.namespace().unwrap_or_default(), &obj.name_any())
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Every object the desired state depends on.
#[derive(Debug, Default, Clone)]
pub struct Cluster {
    pub namespaces: BTreeMap<String, Arc<Namespace>>,
    pub service_accounts: BTreeMap<ObjectKey, Arc<ServiceAccount>>,
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    pub endpoint_slices: BTreeMap<ObjectKey, Arc<EndpointSlice>>,
    pub pods: BTreeMap<ObjectKey, Arc<Pod>>,
    pub policies: BTreeMap<ObjectKey, Arc<MeshPolicy>>,
}

/// One object of any watched kind, e.g. a document of a manifest file.
#[derive(Debug, Clone)]
pub enum Object {
    Namespace(Box<Namespace>),
    ServiceAccount(Box<ServiceAccount>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Pod(Box<Pod>),
    MeshPolicy(Box<MeshPolicy>),
}

impl Cluster {
    /// Adds or replaces `obj`.
    pub fn apply(&mut self, obj: Object) {
        match obj {
            Object::Namespace(o) => {
                self.namespaces.insert(o.name_any(), Arc::new(*o));
            }
            Object::ServiceAccount(o) => insert(&mut self.service_accounts, *o),
            Object::Service(o) => insert(&mut self.services, *o),
            Object::EndpointSlice(o) => insert(&mut self.endpoint_slices, *o),
            Object::Pod(o) => insert(&mut self.pods, *o),
            Object::MeshPolicy(o) => insert(&mut self.policies, *o),
        }
    }

    /// Builds an index from reflector snapshots (or any lists of objects).
    pub fn from_lists(
        namespaces: Vec<Arc<Namespace>>,
        service_accounts: Vec<Arc<ServiceAccount>>,
        services: Vec<Arc<Service>>,
        endpoint_slices: Vec<Arc<EndpointSlice>>,
        pods: Vec<Arc<Pod>>,
        policies: Vec<Arc<MeshPolicy>>,
    ) -> Self {
        fn keyed<K: ResourceExt>(list: Vec<Arc<K>>) -> BTreeMap<ObjectKey, Arc<K>> {
            list.into_iter().map(|o| (ObjectKey::of(&*o), o)).collect()
        }
        Self {
            namespaces: namespaces.into_iter().map(|o| (o.name_any(), o)).collect(),
            service_accounts: keyed(service_accounts),
            services: keyed(services),
            endpoint_slices: keyed(endpoint_slices),
            pods: keyed(pods),
            policies: keyed(policies),
        }
    }
}

fn insert<K: ResourceExt>(map: &mut BTreeMap<ObjectKey, Arc<K>>, obj: K) {
    map.insert(ObjectKey::of(&obj), Arc::new(obj));
}
