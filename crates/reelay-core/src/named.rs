//! Enums whose variants have fixed names on the wire (statuses, codes, models...): one macro
//! gives each its name table, parsing and printing, so no two can drift apart.

/// Text that names no variant of an enum of the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown value {0:?}")]
pub struct UnknownValue(pub String);

/// Declares an enum with a fixed name per variant: `ALL`, `as_str`, `FromStr` and `Display`.
#[macro_export]
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            pub const ALL: [Self; <[&str]>::len(&[$(stringify!($variant)),+])] =
                [$(Self::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        $crate::__named_enum_schema!($name);

        impl ::std::str::FromStr for $name {
            type Err = $crate::named::UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    _ => Err($crate::named::UnknownValue(s.to_owned())),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// With the `openapi` feature, a string schema listing every name of a [`named_enum!`], so the
/// OpenAPI document offers exactly the values the enum parses. A macro of its own so that the
/// feature is judged in this crate, also for enums declared in crates that use `named_enum!`.
#[cfg(feature = "openapi")]
#[doc(hidden)]
#[macro_export]
macro_rules! __named_enum_schema {
    ($name:ident) => {
        impl $crate::__utoipa::PartialSchema for $name {
            fn schema()
            -> $crate::__utoipa::openapi::RefOr<$crate::__utoipa::openapi::schema::Schema> {
                $crate::__utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type($crate::__utoipa::openapi::schema::Type::String)
                    .enum_values(Some(Self::ALL.iter().map(|v| v.as_str())))
                    .into()
            }
        }

        impl $crate::__utoipa::ToSchema for $name {}
    };
}

#[cfg(not(feature = "openapi"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __named_enum_schema {
    ($name:ident) => {};
}
