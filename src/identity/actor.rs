//! Who a command is recorded as acting for: a verified [`Principal`], an unverified
//! caller (authentication off), or Careboard itself.

use super::{Principal, Role};

/// The actor of a command. Every command carries one, so that authorization of
/// mutations can judge it after loading, and event metadata can say who acted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A caller whose bearer token was verified.
    Principal(Principal),
    /// A caller without a verified token (authentication turned off): the name they
    /// gave, which nothing vouches for.
    Anonymous { name: String },
    /// Careboard itself, e.g. the matcher or the live demo: never a person.
    System { name: &'static str },
}

impl Actor {
    /// The actor Careboard itself acts as, named after the component.
    pub const fn system(name: &'static str) -> Actor {
        Actor::System { name }
    }

    pub fn anonymous(name: impl Into<String>) -> Actor {
        Actor::Anonymous { name: name.into() }
    }

    /// The stable identifier recorded as the events' `actor`: the token's subject, the
    /// caller's self-given name, or the component's name.
    pub fn subject(&self) -> &str {
        match self {
            Actor::Principal(p) => &p.subject,
            Actor::Anonymous { name } => name,
            Actor::System { name } => name,
        }
    }

    /// The role recorded with the events: a Careboard role, `anonymous` or `system`.
    pub fn role_name(&self) -> &'static str {
        match self {
            Actor::Principal(p) => p.role.as_str(),
            Actor::Anonymous { .. } => "anonymous",
            Actor::System { .. } => "system",
        }
    }

    /// The verified role, if any.
    pub fn role(&self) -> Option<Role> {
        self.principal().map(|p| p.role)
    }

    /// For people reading the audit trail.
    pub fn name(&self) -> &str {
        match self {
            Actor::Principal(p) => &p.name,
            Actor::Anonymous { name } => name,
            Actor::System { name } => name,
        }
    }

    pub fn principal(&self) -> Option<&Principal> {
        match self {
            Actor::Principal(p) => Some(p),
            _ => None,
        }
    }
}

impl From<Principal> for Actor {
    fn from(p: Principal) -> Self {
        Actor::Principal(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Scope;

    #[test]
    fn each_kind_of_actor_names_its_subject_role_and_name() {
        let p = Actor::from(Principal::new("dev:ana", "Ana Ruiz", Scope::Admin));
        assert_eq!(
            (p.subject(), p.role_name(), p.name()),
            ("dev:ana", "admin", "Ana Ruiz")
        );
        assert_eq!(p.role(), Some(Role::Admin));
        let a = Actor::anonymous("front-desk");
        assert_eq!((a.subject(), a.role_name()), ("front-desk", "anonymous"));
        assert_eq!(a.role(), None);
        let s = Actor::system("matcher");
        assert_eq!(
            (s.subject(), s.role_name(), s.name()),
            ("matcher", "system", "matcher")
        );
    }
}
